"""Speed of the ``densecrf`` post-processor on a VOC-sized image.

    python benchmarks/densecrf.py [--repeat 7] [--classes 21] [--iterations 10] [--image PATH]

One 500 x 375 image (synthetic colour regions, or ``--image``), probabilities
from a smooth random logit field upsampled x8 (like a stride-8 network),
DeepLab's parameters. Prints the median and the best of ``--repeat`` calls of
the whole post-processor (unary, CRF inference, argmax), wall and CPU time;
the CRF code is single-threaded. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import segbench

HEIGHT, WIDTH = 375, 500


def synthetic_image(seed: int = 0) -> torch.Tensor:
    """uint8 [3, 375, 500]: a few flat colour regions with mild noise."""
    g = torch.Generator().manual_seed(seed)
    regions = F.interpolate(torch.rand(1, 3, 6, 8, generator=g) * 255, size=(HEIGHT, WIDTH), mode="nearest")[0]
    noisy = regions + 8 * torch.randn(3, HEIGHT, WIDTH, generator=g)
    return noisy.clamp(0, 255).round().to(torch.uint8)


def load_image(path: str) -> torch.Tensor:
    from PIL import Image
    from torchvision.transforms.v2.functional import pil_to_tensor

    return pil_to_tensor(Image.open(path).convert("RGB"))


def probabilities(classes: int, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """[C, H, W] softmax of a random stride-8 logit field, bilinearly upsampled."""
    g = torch.Generator().manual_seed(seed)
    coarse = 3 * torch.randn(1, classes, size[0] // 8 + 1, size[1] // 8 + 1, generator=g)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)[0].softmax(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--image", default=None, help="an RGB image instead of the synthetic one")
    args = parser.parse_args()
    torch.set_num_threads(1)

    image = load_image(args.image) if args.image else synthetic_image()
    size = tuple(image.shape[-2:])
    prediction = {"score_maps": probabilities(args.classes, size)}
    post = segbench.create_postprocessor("densecrf", iterations=args.iterations)
    post(image, prediction)  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        out = post(image, prediction)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    changed = (out["mask"] != prediction["score_maps"].argmax(0)).float().mean().item()
    print(f"densecrf: {size[1]}x{size[0]} image, {args.classes} classes, {args.iterations} mean-field iterations, "
          f"{args.repeat} repeats")
    print("| time per image | median | best |")
    print("|---|---|---|")
    print(f"| wall | {statistics.median(walls) * 1000:.0f} ms | {min(walls) * 1000:.0f} ms |")
    print(f"| CPU  | {statistics.median(cpus) * 1000:.0f} ms | {min(cpus) * 1000:.0f} ms |")
    print(f"pixels whose label the CRF changed: {changed:.1%}")


if __name__ == "__main__":
    main()
