"""Forward throughput of segbench's segmentation nets beside their anchors: same input, same device, one run.

    python benchmarks/seg_throughput.py [--quick] [--device cpu|cuda] [--threads N] [--repeats R] [--only deeplab_v3]

Pairs (21 classes, random weights, eval mode, ``torch.inference_mode``):

- ``deeplab_v3`` (timm ResNet-50, output stride 8, ASPP rates 12/24/36, multi-grid 1/2/4) vs torchvision
  ``deeplabv3_resnet50(weights=None, weights_backbone=None)`` (output stride 8, rates 12/24/36); again with
  ``multi_grid=None`` (torchvision's layer4 dilations) to isolate the cost of multi-grid.
- ``fcn8s`` (timm ResNet-50 backbone, fc6/fc7 512 wide, 3x3 fc6) vs torchvision ``fcn_resnet50``. Not like for
  like: torchvision's FCN is a dilated output-stride-8 ResNet with one 3x3 head; segbench's is the paper's
  stride-32 net with pool4/pool3 skips. The GFLOP column says how far apart they are.
- ``deeplab_v3plus`` (ResNet-50, output stride 16, separable ASPP 12/24/36 and decoder) vs
  segmentation_models_pytorch ``DeepLabV3Plus("resnet50", encoder_weights=None)`` (same settings).
- ``unet`` (the paper's depth-4, 64-channel U-Net, same padding and batch norm, one pass) vs smp ``Unet`` with
  the ``vgg13_bn`` encoder at depth 4 (the closest smp has to the paper's contracting path). The smp pairs are
  reported as blocked when ``segmentation-models-pytorch`` is not installed (``pip install
  segmentation-models-pytorch``; not a segbench dependency).

Each input (1x3x512x512 and 4x3x256x256) is timed ``warm-up + repeats`` times per model, interleaved within
a pair (A, B, A, B, ...), and the median is kept. ``ratio`` = anchor time / segbench time (>= 1: segbench
is at least as fast). Not a test: it prints a table and the load average around the run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

NUM_CLASSES = 21
INPUTS = ((1, 3, 512, 512), (4, 3, 256, 256))


def ours(name: str, **options):
    import segbench

    return segbench.create_method(name, NUM_CLASSES, **options)


def pairs() -> list[tuple[str, str, object, object, str]]:
    """(label, anchor label, segbench model factory, anchor factory or None, note)."""
    from torchvision.models.segmentation import deeplabv3_resnet50, fcn_resnet50

    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        smp = None
    return [
        ("deeplab_v3 R50 os8", "torchvision deeplabv3_resnet50",
         lambda: ours("deeplab_v3", backbone="resnet50", output_stride=8, aspp_rates=[12, 24, 36]),
         lambda: deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES),
         "torchvision's head adds a 3x3 256-channel conv after the ASPP projection"),
        ("deeplab_v3 R50 os8 multi_grid=None", "torchvision deeplabv3_resnet50",
         lambda: ours("deeplab_v3", backbone="resnet50", output_stride=8, aspp_rates=[12, 24, 36], multi_grid=None),
         lambda: deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES),
         "layer4 dilations as torchvision's (2, 4, 4) instead of multi-grid (4, 8, 16)"),
        ("fcn8s R50 (fc 512, 3x3)", "torchvision fcn_resnet50",
         lambda: ours("fcn8s", backbone="resnet50", fc_channels=512, fc_kernel=3),
         lambda: fcn_resnet50(weights=None, weights_backbone=None, num_classes=NUM_CLASSES),
         "not like for like: stride-32 FCN-8s with skips vs dilated output-stride-8 FCN"),
        ("deeplab_v3plus R50 os16 sep", "smp DeepLabV3Plus resnet50",
         lambda: ours("deeplab_v3plus", backbone="resnet50", output_stride=16, aspp_rates=[12, 24, 36],
                      separable=True),
         (lambda: smp.DeepLabV3Plus(encoder_name="resnet50", encoder_weights=None, classes=NUM_CLASSES,
                                    encoder_output_stride=16, decoder_atrous_rates=(12, 24, 36),
                                    decoder_channels=256)) if smp else None,
         "smp's decoder has one separable 3x3 conv, segbench's two" if smp else
         "BLOCKED: segmentation_models_pytorch is not installed"),
        ("unet depth 4, 64 ch (paper, same padding, BN)", "smp Unet vgg13_bn depth 4",
         lambda: ours("unet", depth=4, base_channels=64, tile_size=0),
         (lambda: smp.Unet(encoder_name="vgg13_bn", encoder_weights=None, encoder_depth=4, classes=NUM_CLASSES,
                           decoder_channels=(512, 256, 128, 64))) if smp else None,
         "not like for like: smp has no paper U-Net encoder; vgg13_bn is its contracting path with 512 instead of "
         "1024 channels at the bottom, see GFLOP" if smp else "BLOCKED: segmentation_models_pytorch is not installed"),
    ]


def forward(model, x):
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def gflops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        forward(model, x)
    return counter.get_total_flops() / 1e9


def timed(model, x, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    forward(model, x)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 warm-up and 3 repeats (default 2 and 10)")
    parser.add_argument("--repeats", type=int, default=0, help="timed forwards per model and input")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--only", default="", help="run only the pairs whose segbench label contains this")
    args = parser.parse_args(argv)
    warmup, repeats = (1, 3) if args.quick else (2, 10)
    repeats = args.repeats or repeats
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    load_before = os.getloadavg()
    print(f"device {device}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"warm-up {warmup}, repeats {repeats}, load average {load_before[0]:.2f}")
    rows = []
    with torch.inference_mode():
        for label, anchor_label, make_ours, make_anchor, note in pairs():
            if args.only not in label:
                continue
            models = {"ours": make_ours().eval().to(device)}
            if make_anchor is not None:
                models["anchor"] = make_anchor().eval().to(device)
            params = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
            for shape in INPUTS:
                x = torch.randn(*shape, device=device)
                outs = {k: forward(m, x) for k, m in models.items()}
                assert all(o.shape == (shape[0], NUM_CLASSES, *shape[2:]) for o in outs.values()), \
                    {k: tuple(o.shape) for k, o in outs.items()}
                flops = {k: gflops(m, x) for k, m in models.items()}
                times: dict[str, list[float]] = {k: [] for k in models}
                for r in range(warmup + repeats):
                    for key, model in models.items():  # interleaved: ours, anchor, ours, anchor, ...
                        t = timed(model, x, device)
                        if r >= warmup:
                            times[key].append(t)
                med = {k: statistics.median(v) for k, v in times.items()}
                ips = {k: shape[0] / v for k, v in med.items()}
                anchor = "anchor" in med
                rows.append([
                    label, anchor_label, "x".join(map(str, shape)),
                    f"{params['ours']:.1f} / {params['anchor']:.1f}" if anchor else f"{params['ours']:.1f} / -",
                    f"{flops['ours']:.0f} / {flops['anchor']:.0f}" if anchor else f"{flops['ours']:.0f} / -",
                    f"{ips['ours']:.3f}", f"{ips['anchor']:.3f}" if anchor else "-",
                    f"{med['anchor'] / med['ours']:.2f}" if anchor else "blocked", note,
                ])
                print(" | ".join(rows[-1]), flush=True)
            del models
    load_after = os.getloadavg()
    headers = ["segbench", "anchor", "input", "Mparams ours/anchor", "GFLOP ours/anchor", "img/s ours",
               "img/s anchor", "ratio", "note"]
    try:
        from tabulate import tabulate

        print(tabulate(rows, headers=headers, tablefmt="github"))
    except ImportError:  # pragma: no cover - tabulate is in the dev requirements
        print(" | ".join(headers))
        for row in rows:
            print(" | ".join(row))
    print(f"load average (1 min) before {load_before[0]:.2f}, after {load_after[0]:.2f}; "
          f"{os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
