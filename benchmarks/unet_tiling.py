"""Peak memory of U-Net's overlap-tile inference on a large image, against one tile's forward pass.

    python benchmarks/unet_tiling.py [--quick] [--image 2048] [--tile 512] [--base 16] [--classes 2] [--threads 1]

Three cases, each in a fresh Python process (torch's CPU allocator returns
large blocks to the system, but a fresh process is the only clean peak):

- ``tile``: one forward pass of the bare network on a ``[1, 3, tile, tile]`` input, the unit;
- ``tiled``: ``UNet.predict`` on a ``[1, 3, image, image]`` input with ``tile_size=tile``
  (the overlap-tile strategy: tiles one at a time, outputs written into the result);
- ``one-pass``: ``UNet.predict`` with ``tile_size=0``, the whole image in one forward pass.

Method. ``tracemalloc`` does not see torch's allocations (they are made in C++),
so the measure is the process' resident set: each case builds the model and
its input, records the current RSS (``/proc/self/statm``) as the baseline, runs
under ``torch.inference_mode()`` and reads the peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``); the case's peak is
``peak - baseline``. It includes what the case returns (the ``[C, H, W]``
probabilities and the int64 ``[H, W]`` mask, listed as "output"). The time is
that of a second identical call (the first warms oneDNN up; the peak is over
both). On a shared machine the times are noisy; the memory is not. Not a test:
it prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = ("tile", "tiled", "one-pass")


def rss_mib() -> float:
    """Current resident set size in MiB (Linux ``/proc/self/statm``; the peak elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_mib()


def peak_mib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def run_case(args: argparse.Namespace) -> dict:
    """One case in this process; returns its numbers."""
    import gc

    import torch

    from segbench_unet.model import UNet

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = UNet(args.classes, depth=args.depth, base_channels=args.base,
                 tile_size=args.tile if args.case == "tiled" else 0).eval()
    side = args.tile if args.case == "tile" else args.image
    x = torch.randn(1, 3, side, side)
    forwards = []
    model.register_forward_pre_hook(lambda m, a: forwards.append(tuple(a[0].shape)))
    call = (lambda: model(x)) if args.case == "tile" else (lambda: model.predict(x))
    gc.collect()
    baseline = rss_mib()
    with torch.inference_mode():
        out = call()
        del out
        start = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - start
    peak = peak_mib()
    output_mib = 0.0 if args.case == "tile" else sum(
        t.numel() * t.element_size() for t in out[0].values()) / 2**20
    return {"case": args.case, "baseline_mib": baseline, "peak_mib": peak, "delta_mib": peak - baseline,
            "output_mib": output_mib, "seconds": seconds, "forwards": len(forwards) // 2,
            "forward_input": list(forwards[0]), "margin": model.geometry.margin, "stride": model.geometry.stride}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1024 px image, 8 base channels")
    parser.add_argument("--image", type=int, default=2048, help="side of the square image")
    parser.add_argument("--tile", type=int, default=512, help="tile_size")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--base", type=int, default=16, help="base_channels (the paper: 64)")
    parser.add_argument("--classes", type=int, default=2, help="classes (the paper's cell segmentation: 2)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case and print JSON
    args = parser.parse_args()
    if args.quick:
        args.image, args.base = 1024, 8
    if args.case:
        print(json.dumps(run_case(args)))
        return

    print(f"U-Net depth {args.depth}, {args.base} base channels, same padding, batch norm, eval; "
          f"{args.classes} classes; image {args.image}x{args.image}; tile {args.tile}; {args.threads} thread(s)")
    rows = []
    for case in args.cases.split(","):
        command = [sys.executable, __file__, "--case", case] + sys.argv[1:]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            print(f"{case}: failed\n{done.stderr[-2000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    unit = next((r["delta_mib"] for r in rows if r["case"] == "tile"), None)
    header = ("case", "forward passes", "input per pass", "peak - baseline MiB", "output MiB", "x one tile",
              "x one tile without output", "seconds")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        ratio = f"{r['delta_mib'] / unit:.2f}" if unit else "-"
        ratio_wo = f"{(r['delta_mib'] - r['output_mib']) / unit:.2f}" if unit else "-"
        shape = "x".join(str(s) for s in r["forward_input"])
        print(f"| {r['case']} | {r['forwards']} | {shape} | {r['delta_mib']:.0f} | {r['output_mib']:.0f} | {ratio} "
              f"| {ratio_wo} | {r['seconds']:.2f} |")
    tiled = next((r for r in rows if r["case"] == "tiled"), None)
    if tiled:
        print(f"tiled: margin (tile_overlap) {tiled['margin']} px, {tiled['stride']} px kept per tile and axis")


if __name__ == "__main__":
    main()
