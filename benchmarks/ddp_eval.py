"""Cost of data parallelism on the CPU: one run's evaluation with 1 process and with N gloo processes.

Three evaluations: 1 process with all cores as torch threads, 1 process with 1 thread, and N
processes sharing the cores. Measures the wall time of each (process start-up included) and the
evaluation time alone (the engine's ``eval_s``: predictions, metric updates, and for N processes
the gathering of metric states on rank 0), and checks that the metrics agree exactly. The load average of the machine is
printed before and after: on a shared machine the timings are upper bounds.

Run: ``python benchmarks/ddp_eval.py`` (trains a short WELDON quick-recipe run on shapes first,
500 validation images at 64 px), or ``python benchmarks/ddp_eval.py --run-id ID --runs-dir DIR``
to evaluate an existing finished run.
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

EVALUATE = """
import json, sys, time
if int(sys.argv[4]) > 1:
    import torch.distributed as tdist
    tdist.init_process_group("gloo")
    rank = tdist.get_rank()
else:
    rank = 0
from segbench.engine.reeval import evaluate_run
result = evaluate_run(sys.argv[1], runs=sys.argv[2], device="cpu", progress=False)
if rank == 0:
    json.dump({"metrics": result["metrics"], "eval_s": result["timings"]["eval_s"]}, open(sys.argv[3], "w"))
"""


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def evaluate(run_id: str, runs: Path, nproc: int, threads: int, work: Path) -> dict:
    """Evaluate in ``nproc`` fresh processes of ``threads`` torch threads each (idle OpenMP threads sleep)."""
    script, out = work / "evaluate.py", work / f"eval-{nproc}-{threads}.json"
    script.write_text(EVALUATE)
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                     f"--nproc_per_node={nproc}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    subprocess.run([*launcher, str(script), run_id, str(runs), str(out), str(nproc)], check=True,
                   capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    return {**json.loads(out.read_text()), "wall_s": wall, "nproc": nproc, "threads": threads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-id", default=None, help="A finished run to evaluate (default: train one).")
    parser.add_argument("--runs-dir", default=None, help="Its runs directory.")
    parser.add_argument("--nproc", type=int, default=2, help="Processes of the parallel evaluation.")
    parser.add_argument("--train-steps", type=int, default=50,
                        help="Steps of the run trained when no --run-id is given (evaluation cost does not depend on them).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="segbench-ddp-eval-"))
    print(f"load average before: {load()}  ({os.cpu_count()} cores)")
    if args.run_id is None:
        from segbench.engine.run import run_experiment

        runs = work / "runs"
        outcome = run_experiment("weldon", "shapes", recipe="quick", overrides={"steps": args.train_steps},
                                 runs=runs, progress=False)
        run_id = outcome.record["run_id"]
        print(f"trained weldon quick ({args.train_steps} steps): run {run_id}, "
              f"{outcome.record['dataset_identity']['num_images']} evaluation images")
    else:
        run_id, runs = args.run_id, Path(args.runs_dir or "runs")
    cores = os.cpu_count() or 1
    rows = [evaluate(run_id, runs, 1, cores, work), evaluate(run_id, runs, 1, 1, work),
            evaluate(run_id, runs, args.nproc, max(1, cores // args.nproc), work)]
    print(f"load average after: {load()}")
    print(f"{'processes':>9} {'threads':>8} {'wall s':>8} {'eval s':>8}  metrics equal to the first row")
    for row in rows:
        a, b = rows[0]["metrics"], row["metrics"]
        same = a.keys() == b.keys() and all(a[k] == b[k] or (a[k] != a[k] and b[k] != b[k]) for k in a)
        print(f"{row['nproc']:>9} {row['threads']:>8} {row['wall_s']:8.2f} {row['eval_s']:8.2f}  "
              f"{'yes' if same else 'NO'} ({len(b)} values)")

if __name__ == "__main__":
    main()
