"""Start-up cost of the CLI, as ratios against the bare interpreter measured in the same run.

Goals: ``segbench --help`` within 1 s, ``segbench list methods`` within 3 s (importing torch,
timm and the rest costs about 8.5 s on a 2-core machine, so the CLI imports them lazily).
Run: ``python benchmarks/startup.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def timed(argv: list[str], repeat: int = 5) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main() -> None:
    anchor = timed([sys.executable, "-c", "pass"])
    torch_import = timed([sys.executable, "-c", "import torch, timm, torchvision"], repeat=1)
    rows = [
        ("python -c pass (anchor)", anchor, None),
        ("import torch, timm, torchvision", torch_import, None),
        ("segbench --help", timed([sys.executable, "-m", "segbench", "--help"]), 1.0),
        ("segbench list methods", timed([sys.executable, "-m", "segbench", "list", "methods"]), 3.0),
    ]
    print(f"{'command':<34} {'median s':>9} {'x anchor':>9} {'goal s':>7}")
    for name, seconds, goal in rows:
        verdict = "" if goal is None else ("ok" if seconds <= goal else "SLOW")
        print(f"{name:<34} {seconds:9.3f} {seconds / anchor:9.1f} {goal or '':>7} {verdict}")


if __name__ == "__main__":
    main()
