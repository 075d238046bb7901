"""Log-sum-exp pooling of segbench-lse beside a plain torch.logsumexp formula and the naive one.

    python benchmarks/lse_pooling.py [--repeat 7] [--threads 1] [--betas 1 10 100]

Maps of 64 x 20 x 32 x 32 float32 values drawn uniformly in [1, 10]. For each
beta: forward + backward time (best of ``--repeat``, the formulas interleaved), the largest difference
from the plain ``(logsumexp(beta z) - log n) / beta`` and from a float64
reference, and whether outputs and gradients are finite. The naive
``log(mean(exp(beta z))) / beta`` overflows in float32 once ``beta z``
passes about 88.7 (so from beta = 10 on these values). Needs the
segbench-lse plugin installed. Not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from segbench_lse.pooling import LSEPool2d, lse_pool2d

SHAPE = (64, 20, 32, 32)


def plain(x: torch.Tensor, beta: float) -> torch.Tensor:
    flat = x.flatten(2)
    return (torch.logsumexp(beta * flat, dim=-1) - math.log(flat.shape[-1])) / beta


def naive(x: torch.Tensor, beta: float) -> torch.Tensor:
    return torch.log(torch.exp(beta * x).mean((2, 3))) / beta


def fwd_bwd(fn, x: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """One forward+backward: seconds, the output and the input gradient."""
    x.grad = None
    start = time.perf_counter()
    out = fn(x)
    out.sum().backward()
    return time.perf_counter() - start, out.detach(), x.grad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 keeps torch's default)")
    parser.add_argument("--betas", type=float, nargs="+", default=[1.0, 10.0, 100.0])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(SHAPE, generator=g) * 9 + 1).requires_grad_(True)
    print(f"maps {'x'.join(map(str, SHAPE))} float32, values in [1, 10], {torch.get_num_threads()} thread(s), "
          f"best of {args.repeat}")
    print()
    print("| formula | beta | fwd+bwd ms | max abs diff vs plain | max abs diff vs float64 | finite out / grad |")
    print("|---|---|---|---|---|---|")
    for beta in args.betas:
        reference = plain(x.detach().double(), beta)
        learned = LSEPool2d(beta, learnable=True)
        cases = [
            ("plain torch.logsumexp (anchor)", lambda t: plain(t, beta)),
            ("segbench_lse lse_pool2d", lambda t: lse_pool2d(t, beta)),
            ("segbench_lse LSEPool2d, learnable beta", learned),
            ("naive log(mean(exp))", lambda t: naive(t, beta)),
        ]
        best = {name: math.inf for name, _ in cases}
        results = {}
        for _ in range(args.repeat):  # interleaved, so a busy moment does not hit one formula only
            for name, fn in cases:
                seconds, out, grad = fwd_bwd(fn, x)
                best[name] = min(best[name], seconds)
                results[name] = (out, grad)
        anchor = results[cases[0][0]][0]
        for name, _ in cases:
            out, grad = results[name]
            finite = f"{bool(torch.isfinite(out).all())} / {bool(torch.isfinite(grad).all())}"
            vs_plain = (out - anchor).abs().max().item()
            vs_ref = (out.double() - reference).abs().max().item()
            print(f"| {name} | {beta:g} | {best[name] * 1e3:.1f} | {vs_plain:.2e} | {vs_ref:.2e} | {finite} |")

if __name__ == "__main__":
    main()
