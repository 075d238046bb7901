"""``segbench predict`` throughput against the bare forward loop of the same model, and the cost of TTA (not a test).

- the model: a finished run of ``--method`` (default ``fcn8s``, its ``quick`` recipe: the tiny ``test_resnet``
  backbone, channels-last), trained for 1 step on ``shapes`` (the weights do not change the cost);
- the images: ``--images`` (200) JPEGs of 500 x 375 (VOC's usual size: W x H), smooth random content, quality 90;
- ``bare``: normalisation and ``model.predict`` on batches of ``--batch-size`` images already decoded (in
  memory, nothing resized back, nothing written): the loop a user writes around the model;
- ``predict``: :func:`segbench.predict.predict_run` on the folder, as ``segbench predict RUN DIR -o OUT`` runs it:
  decoding, the evaluation path (the prediction at the image's size, the run's post-processors), PNG writing;
  goal: throughput >= 0.9x the bare loop's;
- TTA: the evaluation path (:func:`segbench.engine.evaluate.predict_images`, what ``predict`` runs per batch,
  without reading and writing files) on the first ``--tta-images`` decoded images with ``tta`` = "", "flip",
  "ms:0.5,1.0,1.5" and the DeepLab recipes' "ms:0.5,0.75,1.0,1.25,1.5,1.75+flip": seconds per image,
  relative to "", per view (the relative cost divided by the number of forward passes), and the pixels the
  views hold relative to one pass (sum of s^2, twice with flips): what a network's cost follows.

Every case runs twice, alternating, and the faster time is kept (the machine is shared). Torch runs on
``--threads`` threads (default 1, the quick recipes' ``threads``).

Run: ``python benchmarks/predict.py [--images 200] [--batch-size 8] [--tta-images 6] [--threads 1]``
(about 3 minutes on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def write_images(folder: Path, count: int, size: tuple[int, int] = (375, 500)) -> list[Path]:
    """``count`` JPEGs of ``size`` (H, W): upsampled seeded noise, so they compress like photographs."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(count):
        g = torch.Generator().manual_seed(k)
        small = torch.rand(1, 3, size[0] // 16, size[1] // 16, generator=g)
        image = torch.nn.functional.interpolate(small, size=size, mode="bicubic", align_corners=False)[0]
        array = (image.clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 0).numpy()
        paths.append(folder / f"{k:06d}.jpg")
        Image.fromarray(array).save(paths[-1], quality=90)
    return paths


def bare_loop(model, decoded: list, batch_size: int, normalize) -> float:
    """Seconds of normalising and ``model.predict`` over the decoded images, batch by batch."""
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(decoded), batch_size):
            model.predict(normalize(decoded[i:i + batch_size]))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="fcn8s")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--tta-images", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    from segbench.data.files import read_rgb
    from segbench.engine.data import Normalizer
    from segbench.engine.evaluate import predict_images
    from segbench.engine.reeval import build_run_model
    from segbench.engine.run import run_experiment
    from segbench.plugins import get_registry
    from segbench.predict import predict_run
    from segbench.results.store import RunStore

    root = Path(tempfile.mkdtemp(prefix="segbench-predict-bench-"))
    runs = root / "runs"
    overrides = {"steps": 1, "batch_size": 2, "num_train": 2, "num_val": 2, "image_size": 32, "threads": args.threads}
    record = run_experiment(args.method, "shapes", recipe="quick", overrides=overrides, runs=runs,
                            progress=False).record
    run_id, train = record["run_id"], record["config"]["train"]
    paths = write_images(root / "images", args.images)
    spec = get_registry().method(args.method)
    dataset = get_registry().dataset("shapes")
    model = build_run_model(spec, dataset.num_classes, RunStore(runs), record).eval()
    normalize = Normalizer(dataset.mean, dataset.std, torch.device("cpu"), train["channels_last"])
    decoded = [read_rgb(p) for p in paths]
    bare_loop(model, decoded[: args.batch_size], args.batch_size, normalize)  # warm-up (oneDNN)

    def predict_once(tag: str, images, tta: str = "") -> float:
        out = root / f"out-{tag}-{time.perf_counter_ns()}"
        start = time.perf_counter()
        predict_run(run_id, images, out, runs=runs, device="cpu", batch_size=args.batch_size, tta=tta,
                    progress=False)
        return time.perf_counter() - start

    bare, full = [], []
    for _ in range(2):
        bare.append(bare_loop(model, decoded, args.batch_size, normalize))
        full.append(predict_once("all", [str(root / "images")]))
    b, p = min(bare), min(full)
    print(f"method {args.method} (quick recipe), {args.images} images 500x375, batch {args.batch_size}, "
          f"{args.threads} thread(s); times: best of 2")
    print(f"bare model.predict loop: {b:7.2f} s  {args.images / b:6.2f} img/s")
    print(f"segbench predict:        {p:7.2f} s  {args.images / p:6.2f} img/s  ({b / p:.2f}x the bare loop)")
    from segbench.engine.tta import parse_tta

    cases = ["", "flip", "ms:0.5,1.0,1.5", "ms:0.5,0.75,1.0,1.25,1.5,1.75+flip"]
    times = {tta: [] for tta in cases}
    subset = decoded[: args.tta_images]
    sizes = [tuple(img.shape[-2:]) for img in subset]
    for _ in range(2):
        for tta in cases:
            start = time.perf_counter()
            with torch.inference_mode():
                for i in range(0, len(subset), args.batch_size):
                    predict_images(model, subset[i:i + args.batch_size], sizes[i:i + args.batch_size], normalize,
                                   torch.device("cpu"), tta=tta)
            times[tta].append(time.perf_counter() - start)
    times = {tta: min(values) for tta, values in times.items()}
    print(f"TTA on {args.tta_images} images (predict_images; s/image, x plain, x plain per view, "
          "pixels of the views x one pass):")
    for tta in cases:
        scales, flip = parse_tta(tta)
        views, pixels = len(scales) * (1 + flip), sum(s * s for s in scales) * (1 + flip)
        rel = times[tta] / times[""]
        print(f"  {tta or '(none)':<38} {times[tta] / args.tta_images:6.3f} s  {rel:5.2f}x  {rel / views:5.2f}x/view"
              f"  {pixels:5.2f}x pixels")
    import shutil

    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
