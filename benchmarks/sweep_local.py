"""A local sweep of six quick runs, one at a time (K=1) and two at a time (K=2): wall time of each, and a check
that both sweeps wrote the same records (same run ids, same metrics) and the same leaderboard.

The runs are shrunk so the benchmark takes minutes on 2 cores: WELDON and FCN-8s, seeds 0, 1, 2, on shapes
with ``steps=20 batch_size=8 num_train=64 num_val=32 image_size=48 threads=1`` (one torch thread per run,
so K=2 uses the two cores). The machine's load average is printed before and after each sweep: on a shared
machine the timings mean little without it.

Run: ``python benchmarks/sweep_local.py`` (``--keep DIR`` keeps the two runs directories there).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = "weldon,fcn8s"
SEEDS = "0,1,2"
OVERRIDES = ["steps=20", "batch_size=8", "num_train=64", "num_val=32", "image_size=48", "threads=1"]


def sweep_command(runs: Path, jobs: int) -> list[str]:
    sets = [part for item in OVERRIDES for part in ("--set", item)]
    return [sys.executable, "-m", "segbench", "sweep", "--methods", METHODS, "--datasets", "shapes",
            "--seeds", SEEDS, *sets, "--jobs", str(jobs), "--runs-dir", str(runs)]


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def records(runs: Path) -> dict[str, dict]:
    """run id -> (status, metrics) of every record in ``runs``."""
    out = {}
    for path in sorted(runs.glob("*.json")):
        record = json.loads(path.read_text())
        out[record["run_id"]] = {"status": record["status"], "method": record["method"], "seed": record["seed"],
                                 "metrics": record["metrics"]}
    return out


def board(runs: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "segbench", "leaderboard", "--by", "metrics", "--format", "csv",
                           "--fractions", "--runs-dir", str(runs)], capture_output=True, text=True, check=True)
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", default=None, help="Directory to keep the runs in (default: a temporary one).")
    args = parser.parse_args()
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU cores; runs under {base}")
    print("command: segbench sweep --methods", METHODS, "--datasets shapes --seeds", SEEDS,
          " ".join(f"--set {o}" for o in OVERRIDES), "--jobs K --runs-dir DIR")
    walls = {}
    for jobs in (1, 2):
        runs = base / f"k{jobs}"
        before = load()
        start = time.perf_counter()
        done = subprocess.run(sweep_command(runs, jobs), capture_output=True, text=True)
        walls[jobs] = time.perf_counter() - start
        print(f"\nK={jobs}: {walls[jobs]:.1f} s wall (exit {done.returncode}); load average before {before}, "
              f"after {load()}")
        print(done.stdout.rstrip())
        if done.returncode:
            print(done.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"the K={jobs} sweep failed")
    one, two = records(base / "k1"), records(base / "k2")
    same_ids = set(one) == set(two)
    same_metrics = same_ids and all(one[i]["metrics"] == two[i]["metrics"] for i in one)
    differing = sorted(i for i in set(one) & set(two) if one[i]["metrics"] != two[i]["metrics"])
    same_board = board(base / "k1") == board(base / "k2")
    print(f"\nrecords: {len(one)} (K=1) and {len(two)} (K=2); same run ids: {same_ids}; "
          f"identical metrics: {same_metrics}" + (f" (differ: {', '.join(differing)})" if differing else ""))
    print(f"leaderboards (csv, --by metrics) identical: {same_board}")
    print(f"speed-up K=2 over K=1: {walls[1] / walls[2]:.2f}x")
    if not (same_ids and same_metrics and same_board):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
