"""GPU cost of the heavy methods: training and evaluation throughput, peak memory, model FLOP utilisation.

For each method (default: ``deeplab_v3plus`` with a ResNet-50 at 512x512, and Mask R-CNN
(``mask_rcnn``) with its ResNet-50-FPN on 512x512 images, resized to 800 px inside the detector as in
its paper recipe), in bf16 autocast:

- training: images per second over ``--steps`` optimizer steps after ``--warmup`` steps;
- evaluation: images per second of ``model.predict`` over ``--eval-batches`` batches, one pass
  at the training output stride (``--paper-eval``: the paper recipe's protocol, for DeepLab six
  scales and their flips at output stride 8, about 45x the FLOPs);
- peak memory: ``torch.cuda.max_memory_allocated`` of each phase (the process's peak RSS on the CPU);
- FLOPs per image of one training step (forward + backward) and of one prediction, counted by
  ``torch.utils.flop_counter.FlopCounterMode`` (matrix products and convolutions; RoIAlign, NMS and
  element-wise ops are not counted, so detection FLOPs are a lower bound);
- MFU: achieved training FLOP/s over the card's dense bf16 peak (table below, by device name).

Random weights (no download), shapes images at the benchmark size as data (their masks, boxes and
instances make valid targets for every supervision), cuDNN benchmark on (not deterministic).
A method that is not registered is skipped with a message.

Run: ``python benchmarks/gpu.py`` on a GPU; ``python benchmarks/gpu.py --quick`` anywhere (CPU smoke
check: 64 px, batch 2, 2 steps, fp32). ``--json FILE`` writes the rows.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from the vendors' data sheets; first match wins
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.0),
)

# method -> model options over its paper recipe, image size, batch size per step
SINGLE_SCALE = {"eval_scales": [1.0], "eval_flip": False, "eval_output_stride": None}
BENCHMARKS: dict[str, dict[str, Any]] = {
    "deeplab_v3plus": {"model": {"backbone": "resnet50"}, "size": 512, "batch_size": 16},
    "mask_rcnn": {"model": {"backbone": "resnet50_fpn"}, "size": 512, "batch_size": 8},
}
QUICK_MODEL = {"mask_rcnn": {"image_min_size": 0}}  # keep 64 px on the CPU


def peak_tflops(device_name: str) -> float | None:
    """The card's dense bf16 peak from :data:`PEAK_BF16_TFLOPS`, or None when unknown."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops
    return None


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mb(device) -> float | None:
    import torch

    from segbench.engine.resources import peak_rss_mb

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else peak_rss_mb()


def _batches(method_spec, size: int, batch_size: int, count: int):
    """``count`` batches of shapes training samples at ``size`` px, targets cut to what the method learns from."""
    from segbench.api import create_dataset
    from segbench.engine.data import TrainView, collate, training_keys

    data = TrainView(create_dataset("shapes", "train", image_size=size, num_train=batch_size * count),
                     training_keys(method_spec.requires_annotations))
    return [collate([data[b * batch_size + i] for i in range(batch_size)]) for b in range(count)]


def bench_method(name: str, args, device) -> dict[str, Any] | None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.engine.config import TRAIN_KEYS, TrainConfig
    from segbench.engine.data import Normalizer, targets_to
    from segbench.engine.device import autocast
    from segbench.engine.optim import build_optimizer
    from segbench.plugins import get_registry

    registry = get_registry()
    if name not in registry.methods:
        print(f"skip {name}: not registered here (see 'segbench list methods'; install its plugin)")
        return None
    spec, setting = registry.method(name), BENCHMARKS.get(name, {"model": {}, "size": 512, "batch_size": 8})
    paper = spec.recipes.get("paper")
    model_options = {**(paper.model if paper else {}), **setting["model"]}
    if not args.paper_eval:  # one pass at the training output stride, not the papers' multi-scale + flip
        model_options.update(SINGLE_SCALE)
    model_options.update({k: v for k, v in (("pretrained", False), ("weights", None)) if k in spec.options})
    train_options = {k: v for k, v in (paper.train if paper else {}).items() if k in TRAIN_KEYS}
    size, batch_size = setting["size"], args.batch_size or setting["batch_size"]
    if args.quick:
        model_options.update(QUICK_MODEL.get(name, {}))
        size, batch_size = 64, min(batch_size, 2)
    model_options = {k: v for k, v in model_options.items() if k in spec.options}
    amp = "bf16" if device.type == "cuda" and not args.fp32 else "off"
    config = TrainConfig(**{**train_options, "amp": amp, "channels_last": args.channels_last})
    model = spec.build(registry.dataset("shapes").num_classes, **model_options).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, config)
    dataset = registry.dataset("shapes")
    normalize = Normalizer(dataset.mean, dataset.std, device, args.channels_last)
    batches = _batches(spec, size, batch_size, 2)

    def train_step(batch) -> None:
        images = normalize(batch["images"])
        with autocast(device, amp):
            losses = model.loss(images, targets_to(batch["targets"], device))
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    model.train()
    with FlopCounterMode(display=False) as counter:
        train_step(batches[0])
    train_flops = counter.get_total_flops() / batch_size
    for i in range(args.warmup):
        train_step(batches[i % 2])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    for i in range(args.steps):
        train_step(batches[i % 2])
    _sync(device)
    train_ips = args.steps * batch_size / (time.perf_counter() - start)
    train_peak = _peak_mb(device)

    model.eval()
    eval_images = [normalize(b["images"]) for b in batches]
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter, autocast(device, amp):
            model.predict(eval_images[0])
        eval_flops = counter.get_total_flops() / batch_size
        with autocast(device, amp):
            model.predict(eval_images[1])  # warm-up
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        _sync(device)
        start = time.perf_counter()
        for i in range(args.eval_batches):
            with autocast(device, amp):
                model.predict(eval_images[i % 2])
        _sync(device)
    eval_ips = args.eval_batches * batch_size / (time.perf_counter() - start)
    peak = peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" and amp == "bf16" else None
    return {
        "method": name, "backbone": model_options.get("backbone"), "size": size, "batch_size": batch_size,
        "amp": amp, "train_images_per_s": round(train_ips, 2), "eval_images_per_s": round(eval_ips, 2),
        "train_gflops_per_image": round(train_flops / 1e9, 2), "eval_gflops_per_image": round(eval_flops / 1e9, 2),
        "train_peak_mb": train_peak, "eval_peak_mb": _peak_mb(device),
        "train_tflops_per_s": round(train_flops * train_ips / 1e12, 2),
        "mfu": round(train_flops * train_ips / (peak * 1e12), 4) if peak else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="deeplab_v3plus,mask_rcnn", help="Comma-separated method names.")
    parser.add_argument("--quick", action="store_true", help="CPU smoke check: 64 px, batch 2, 2 steps.")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N]")
    parser.add_argument("--steps", type=int, default=20, help="Timed training steps.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed training steps first.")
    parser.add_argument("--eval-batches", type=int, default=20, help="Timed evaluation batches.")
    parser.add_argument("--batch-size", type=int, default=0, help="Images per step (default: per method).")
    parser.add_argument("--fp32", action="store_true", help="No bf16 autocast on CUDA.")
    parser.add_argument("--channels-last", action="store_true", help="channels_last memory format.")
    parser.add_argument("--paper-eval", action="store_true",
                        help="Evaluate as the paper recipe does (DeepLab: 6 scales + flip at output stride 8).")
    parser.add_argument("--json", default=None, help="Also write the rows to this JSON file.")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.eval_batches = min(args.steps, 2), min(args.warmup, 1), min(args.eval_batches, 2)

    import torch

    from segbench.engine.device import device_name, resolve_device
    from segbench.engine.seeding import seed_everything, set_deterministic

    device = resolve_device(args.device)
    set_deterministic(False)  # cuDNN picks its fastest algorithms
    seed_everything(0)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    name = device_name(device)
    print(f"device: {device} ({name}); torch {torch.__version__}; "
          f"peak bf16: {peak_tflops(name) if device.type == 'cuda' else None} TFLOP/s")
    rows = [row for method in args.methods.split(",") if method.strip()
            for row in [bench_method(method.strip(), args, device)] if row is not None]
    header = ("method", "size", "batch", "amp", "train img/s", "eval img/s", "train GFLOP/img", "eval GFLOP/img",
              "train peak MiB", "eval peak MiB", "TFLOP/s", "MFU")
    print(" | ".join(header))
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f} %" if r["mfu"] is not None else "n/a"
        print(" | ".join(str(v) for v in (
            f"{r['method']} ({r['backbone']})", r["size"], r["batch_size"], r["amp"], r["train_images_per_s"],
            r["eval_images_per_s"], r["train_gflops_per_image"], r["eval_gflops_per_image"], r["train_peak_mb"],
            r["eval_peak_mb"], r["train_tflops_per_s"], mfu)))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
