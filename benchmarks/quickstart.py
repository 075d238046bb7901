"""The README's quickstart run, timed: ``segbench run --method weldon --dataset shapes`` in a fresh runs folder.

Prints the wall time, the CPU time (user + system, all threads and children), the record's own timings and
metrics, the commit and the date: the line README.md and docs/benchmarks.md quote. The goal (issue 19) is
at most 120 s of wall time on 2 idle cores; run it on an otherwise idle machine (``uptime`` before and after
is printed: a load above ~0.5 at the start means another job shares the cores).

    python benchmarks/quickstart.py [--repeat N] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    """The 1-minute load average, as ``uptime`` reports it."""
    return f"{os.getloadavg()[0]:.2f}"


def one_run(extra: list[str]) -> dict:
    """One fresh quickstart run in its own process; its wall and CPU seconds and its record."""
    with tempfile.TemporaryDirectory() as runs:
        command = [sys.executable, "-m", "segbench", "run", "--method", "weldon", "--dataset", "shapes",
                   "--runs-dir", runs, "-q", *extra]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if done.returncode:
            raise SystemExit(f"quickstart failed ({done.returncode}): {done.stderr.strip().splitlines()[-1]}")
        record = json.loads(next(Path(runs).glob("*.json")).read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "cpu_pct": round(100 * cpu / wall),
            "train_s": record["timings"]["train_s"], "eval_s": record["timings"]["eval_s"],
            "cls_map": record["metrics"].get("cls_map"), "loc_map": record["metrics"].get("loc_map"),
            "run_id": record["run_id"], "threads": record["resources"].get("threads")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="a recipe override, as segbench run --set")
    args = parser.parse_args()
    extra = [item for kv in args.set for item in ("--set", kv)]
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"quickstart at {commit}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
          f"load {load()} at start" + (f", overrides {' '.join(args.set)}" if args.set else ""))
    for i in range(args.repeat):
        result = one_run(extra)
        print(f"run {i + 1}: wall {result['wall_s']} s (train {result['train_s']} s, eval {result['eval_s']} s), "
              f"CPU {result['cpu_s']} s = {result['cpu_pct']} % of one core, {result['threads']} threads; "
              f"cls_map {result['cls_map']:.3f}, loc_map {result['loc_map']:.3f} (run {result['run_id']}); "
              f"load {load()}")


if __name__ == "__main__":
    main()
