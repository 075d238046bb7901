"""``segbench predict RUN PATH... -o DIR``: a finished run's predictions on any images, written as files.

What is written, for each input image ``NAME.ext`` (the name must be unique among the inputs):

- ``DIR/NAME.png``: the label map, a palette PNG of the input's size, pixel value = class index, the
  dataset's own class colours where its files give them (a CVAT ``labelmap.txt``, datumaro's
  ``segmentation_colors``: the record's ``class_colors``), else the PASCAL VOC palette
  (:func:`segbench.data.export.voc_palette`);
- ``DIR/score_maps/NAME.npz`` with ``--score-maps``: ``score_maps`` float16 ``[C, H, W]`` at the input's
  size, ``scores`` float16 ``[C]`` where the method gives image scores, ``classes`` (the class names);
- ``DIR/overlays/NAME.png`` with ``--overlay``: the image with its label map drawn over it
  (``torchvision.utils.draw_segmentation_masks``, the palette's colours, background left clear);
- ``DIR/instances.json`` for methods that predict instances: COCO results (XYWH ``bbox``, compressed RLE
  ``segmentation`` where the method gives masks, ``score``), readable by ``segbench coco-eval`` and
  pycocotools' ``loadRes``. Category ids: those of ``--coco-gt`` (the k-th class other than the background is
  its k-th category id), else COCO's ids for the ``coco`` dataset, else 1..K as ``segbench data export``
  writes them. Image ids: the ``--coco-gt`` image of the same file name, else the file names' numbers when
  every name is a number (COCO's ``000000397133.jpg``), else 1, 2, ... in input order.

Predictions take the evaluation path (:func:`segbench.engine.evaluate.predict_images`): the run's
``eval_size`` rule, its test-time augmentation and sliding window (``--tta`` / ``--slide`` replace them), its
post-processors (the class-map rule for methods without a label map, the dense CRF where the run used it).
Everything is written into a temporary folder beside ``DIR`` and moved in at the end: an error leaves ``DIR``
as it was.
"""

from __future__ import annotations

import glob
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from segbench.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
INSTANCES_FILE = "instances.json"


@dataclass
class PredictResult:
    """What :func:`predict_run` wrote."""

    out: Path
    images: int
    files: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def collect_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The image files named by ``paths``: files, folders (their images, sorted) or glob patterns (sorted);
    a one-line error naming a path that does not exist or holds no image."""
    found: list[Path] = []
    for raw in paths:
        text = os.fspath(raw)
        path = Path(text)
        if path.is_file():
            found.append(path)
            continue
        if path.is_dir():
            inside = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise DataError(f"{path}: no images in this folder ({', '.join(IMAGE_SUFFIXES)})")
            found += inside
            continue
        if glob.has_magic(text):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
            if not files:
                raise DataError(f"{text}: no images match this pattern")
            found += files
            continue
        raise DataError(f"{path}: no such file or folder")
    if not found:
        raise DataError("no images given")
    return list(dict.fromkeys(found))


def planned_outputs(images: Sequence[Path], *, score_maps: bool, overlay: bool, instances: bool) -> list[Path]:
    """The files predicting ``images`` writes, relative to the output folder; two inputs of one name are an error."""
    seen: dict[str, Path] = {}
    for image in images:
        if image.stem in seen:
            raise ConfigError(f"{seen[image.stem]} and {image} would both write {image.stem}.png; predict them "
                              "into separate folders")
        seen[image.stem] = image
    files = [Path(f"{stem}.png") for stem in seen]
    if score_maps:
        files += [Path("score_maps") / f"{stem}.npz" for stem in seen]
    if overlay:
        files += [Path("overlays") / f"{stem}.png" for stem in seen]
    if instances:
        files.append(Path(INSTANCES_FILE))
    return files


def predict_run(run_id: str, paths: Sequence[str | os.PathLike], out: str | os.PathLike, *,
                runs: str | os.PathLike | None = None, device: str = "auto", batch_size: int | None = None,
                tta: str | None = None, slide: str | None = None, score_maps: bool = False, overlay: bool = False,
                coco_gt: str | os.PathLike | None = None, force: bool = False,
                progress: bool = True) -> PredictResult:
    """Predict ``paths`` (files, folders, globs) with run ``run_id`` and write the files of the module docstring
    under ``out``. Existing outputs are refused unless ``force``; nothing is written when anything fails."""
    import torch
    from tqdm.auto import tqdm

    from segbench.engine.data import Normalizer
    from segbench.engine.evaluate import needs_full_score_maps, predict_images

    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a folder")
    images = collect_images(paths)
    run = _load(run_id, runs, device, tta, slide)
    instances = "instances" in run["method"].outputs
    files = planned_outputs(images, score_maps=score_maps, overlay=overlay, instances=instances)
    existing = next((out / f for f in files if (out / f).exists()), None)
    if existing is not None and not force:
        raise ConfigError(f"{existing} already exists; use --force to overwrite it")
    batch_size = batch_size or run["train"].get("eval_batch_size", 16)
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    coco = _CocoIds(run, images, coco_gt) if instances else None
    model, torch_device = run["model"], run["device"]
    train = run["train"]
    normalize = Normalizer(run["dataset"].mean, run["dataset"].std, torch_device, train.get("channels_last", False))
    full_maps = score_maps or needs_full_score_maps([], run["post"])
    here = out.resolve()
    writer = _Writer(here.parent / f".{here.name}.predict-{os.getpid()}.tmp", run["classes"], run["dataset"].background,
                     run["record"].get("class_colors"))
    batches = [images[i:i + batch_size] for i in range(0, len(images), batch_size)]
    results: list[dict] = []
    try:
        with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as saver, torch.inference_mode():
            pending = []
            upcoming = reader.submit(_read, batches[0])
            for k in tqdm(range(len(batches)), desc="predict", unit="batch", disable=not progress,
                          dynamic_ncols=True):
                decoded = upcoming.result()
                if k + 1 < len(batches):
                    upcoming = reader.submit(_read, batches[k + 1])
                sizes = [tuple(img.shape[-2:]) for img in decoded]
                predictions = predict_images(model, decoded, sizes, normalize, torch_device,
                                             amp=train.get("amp", "off"), eval_size=train.get("eval_size", 0),
                                             postprocessors=run["post"], full_maps=full_maps, **run["test_time"])
                for path, image, prediction in zip(batches[k], decoded, predictions):
                    if coco is not None:
                        results += coco.results(path, prediction)
                    pending.append(saver.submit(writer.write, path.stem, image, prediction, score_maps, overlay))
                while len(pending) > batch_size:  # bounded memory: wait for the oldest writes
                    pending.pop(0).result()
            for job in pending:
                job.result()
        if coco is not None:
            writer.write_json(INSTANCES_FILE, results)
        moved = writer.move_into(out, files)
    except BaseException:
        shutil.rmtree(writer.root, ignore_errors=True)
        raise
    return PredictResult(out, len(images), moved, time.perf_counter() - started)


def _load(run_id: str, runs: Any, device: str, tta: str | None, slide: str | None) -> dict[str, Any]:
    """The run's record, method, dataset spec (its recorded classes), model on ``device`` in eval mode, the
    test-time options and its post-processors (the class-map rule first where the method has no label map)."""
    import dataclasses

    from segbench.engine.config import resolve_config
    from segbench.engine.device import resolve_device
    from segbench.engine.reeval import build_run_model, finished_record, run_test_time
    from segbench.engine.run import AUTO_POSTPROCESS, postprocess_chain, postprocess_objects, runs_dir
    from segbench.plugins import get_registry
    from segbench.results.store import RunStore

    store = RunStore(runs_dir(runs))
    record = finished_record(store, run_id)
    registry = get_registry()
    method_spec = registry.method(record["method"])
    dataset_spec = registry.dataset(record["dataset"])
    classes = tuple(record.get("class_names") or dataset_spec.classes)
    if classes != dataset_spec.classes:  # a dataset whose classes come from its files: the run's own
        dataset_spec = dataclasses.replace(dataset_spec, classes=classes)
    test_time = run_test_time(method_spec, record, tta, slide)
    saved = record["config"].get("postprocess") or {}
    requested = [name for name in saved if name != AUTO_POSTPROCESS]
    if "mask" not in method_spec.outputs and "score_maps" in method_spec.outputs:
        requested.insert(0, AUTO_POSTPROCESS)  # a label map for every image, also where the data had no masks
    chain, _ = postprocess_chain(method_spec, dataset_spec, registry, requested)
    config = resolve_config(method_spec, dataset_spec, {}, record["recipe"], {}, chain)
    for name, options in saved.items():
        config.postprocess.get(name, {}).update(options)
    torch_device = resolve_device(device)
    model = build_run_model(method_spec, len(classes), store, record).to(torch_device).eval()
    return {"record": record, "method": method_spec, "dataset": dataset_spec, "classes": classes,
            "model": model, "device": torch_device, "train": record["config"]["train"], "test_time": test_time,
            "post": postprocess_objects(chain, config, method_spec, dataset_spec)}


def _read(paths: Sequence[Path]) -> list[Any]:
    """Decode ``paths`` as uint8 RGB ``[3, H, W]``; a one-line DataError naming the first that does not decode."""
    from segbench.data.files import read_rgb

    return [read_rgb(path) for path in paths]


class _Writer:
    """Writes one image's files into ``root`` (a temporary folder), then moves them all into the output."""

    def __init__(self, root: Path, classes: Sequence[str], background: int | None = 0,
                 class_colors: Sequence[Sequence[int]] | None = None) -> None:
        from segbench.data.export import voc_palette

        if len(classes) > 256:
            raise ConfigError(f"{len(classes)} classes do not fit a palette PNG (256 at most)")
        palette = voc_palette()
        for c, colour in enumerate((class_colors or [])[:len(classes)]):  # the dataset's own colours (labelmap.txt)
            palette[3 * c:3 * c + 3] = [int(v) for v in colour]
        self.root, self.classes, self.palette = root, tuple(classes), palette
        self.background = background
        self.colors = [tuple(self.palette[3 * c:3 * c + 3]) for c in range(len(classes))]
        root.mkdir(parents=True, exist_ok=True)

    def write(self, stem: str, image: Any, prediction: dict, score_maps: bool, overlay: bool) -> None:
        import numpy as np
        import torch
        from PIL import Image

        mask = prediction["mask"]
        height, width = mask.shape
        labels = Image.frombytes("P", (width, height), mask.to(torch.uint8).numpy().tobytes())
        labels.putpalette(self.palette)
        labels.save(self.root / f"{stem}.png", optimize=False)
        if score_maps:
            arrays = {"score_maps": prediction["score_maps"].float().numpy().astype(np.float16),
                      "classes": np.array(self.classes)}
            if "scores" in prediction:
                arrays["scores"] = prediction["scores"].float().numpy().astype(np.float16)
            (self.root / "score_maps").mkdir(exist_ok=True)
            np.savez(self.root / "score_maps" / f"{stem}.npz", **arrays)
        if overlay:
            (self.root / "overlays").mkdir(exist_ok=True)
            Image.fromarray(self.overlay(image, mask)).save(self.root / "overlays" / f"{stem}.png")

    def overlay(self, image: Any, mask: Any) -> Any:
        """The image with each predicted class but the background drawn in its palette colour (alpha 0.5)."""
        import torch
        from torchvision.utils import draw_segmentation_masks

        present = [int(c) for c in torch.unique(mask) if int(c) != self.background]
        if not present:
            return image.permute(1, 2, 0).numpy()
        masks = torch.stack([mask == c for c in present])
        drawn = draw_segmentation_masks(image, masks, alpha=0.5, colors=[self.colors[c] for c in present])
        return drawn.permute(1, 2, 0).contiguous().numpy()

    def write_json(self, name: str, doc: Any) -> None:
        from segbench.metrics.coco import save_results

        save_results(doc, self.root / name)

    def move_into(self, out: Path, files: Sequence[Path]) -> list[Path]:
        """Every planned file from the temporary folder into ``out`` (renames), then the folder removed."""
        out.mkdir(parents=True, exist_ok=True)
        moved = []
        for name in files:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.root / name, target)
            moved.append(target)
        shutil.rmtree(self.root, ignore_errors=True)
        return moved


class _CocoIds:
    """COCO image and category ids for the images of one prediction, and their results (see the module docstring)."""

    def __init__(self, run: dict[str, Any], images: Sequence[Path], coco_gt: str | os.PathLike | None) -> None:
        background = run["dataset"].background
        kept = [c for c in range(len(run["classes"])) if c != background]
        metric = run["record"]["config"].get("metrics", {}).get("coco_ap", {})
        self.threshold = float(metric.get("mask_threshold", 0.5))  # the run's, as its coco_ap scored masks
        if coco_gt is not None:
            from segbench.metrics.coco import load_json

            doc = load_json(coco_gt, "COCO ground truth")
            by_name = {Path(img["file_name"]).name: int(img["id"]) for img in doc.get("images", [])}
            missing = next((p for p in images if p.name not in by_name), None)
            if missing is not None:
                raise DataError(f"{coco_gt}: no image with file_name {missing.name} (the input {missing})")
            self.image_ids = {p: by_name[p.name] for p in images}
            ids = sorted(int(cat["id"]) for cat in doc.get("categories", []))
            if len(ids) != len(kept):
                raise DataError(f"{coco_gt}: {len(ids)} categories, but run's dataset has {len(kept)} classes "
                                "besides the background")
            self.categories = dict(zip(kept, ids))
        else:
            numbers = all(p.stem.isdigit() for p in images) and len({int(p.stem) for p in images}) == len(images)
            self.image_ids = {p: (int(p.stem) if numbers else k + 1) for k, p in enumerate(images)}
            if run["dataset"].name == "coco":
                from segbench.data.builtin import COCO_CATEGORIES

                self.categories = dict(zip(kept, (cid for cid, _ in COCO_CATEGORIES)))
            else:
                self.categories = {c: k + 1 for k, c in enumerate(kept)}  # segbench data export's numbering

    def results(self, path: Path, prediction: dict) -> list[dict]:
        """The COCO result dicts of one image's ``instances`` (masks at the image's size)."""
        import numpy as np

        from segbench.metrics.coco import encode_masks

        instances = prediction["instances"]
        boxes = instances["boxes"].detach().float().cpu().numpy().reshape(-1, 4).astype(np.float64)
        classes = instances["classes"].detach().cpu().numpy().reshape(-1).tolist()
        scores = instances["scores"].detach().float().cpu().numpy().reshape(-1).tolist()
        masks = instances.get("masks")
        counts = None
        if masks is not None:
            masks = masks.detach().cpu()
            masks = (masks > self.threshold if masks.is_floating_point() else masks.bool()).numpy()
            counts = encode_masks(masks)
        out = []
        for k, (c, score) in enumerate(zip(classes, scores)):
            x1, y1, x2, y2 = boxes[k].tolist()
            result = {"image_id": self.image_ids[path], "category_id": self.categories[int(c)],
                      "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)}
            if counts is not None:
                result["segmentation"] = {"size": [int(masks.shape[1]), int(masks.shape[2])], "counts": counts[k]}
            out.append(result)
        return out
