"""Every method's recipe on ``shapes``, one fresh process each: time and metrics in one table (not a test).

Each run is ``segbench run --method M --dataset shapes --recipe R`` in its own
process, timed from outside: wall time and the CPU time the process used
(user + system). On a machine other jobs share, wall time grows while CPU time
barely moves, so the CPU time of a one-thread recipe is the wall time it would
take on an idle machine. The metrics come from the run records; the table goes
to stdout and, with ``--out``, to a Markdown file (the shapes leaderboards in
``leaderboards/``).

Run: ``python benchmarks/shapes_bench.py --family wsl --recipe bench --out leaderboards/shapes_wsl.md``
(families: wsl, supervised, instance; or ``--methods a,b``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FAMILIES = {
    "wsl": ["weldon", "deepmil", "cam", "lse", "spleap", "wildcat", "pronet", "wsloc", "emadapt"],
    "supervised": ["fcn32s", "fcn16s", "fcn8s", "deeplab_v1", "deeplab_v2", "deeplab_v3", "deeplab_v3plus",
                   "deconvnet", "unet"],
    "instance": ["mask_rcnn"],
}
COLUMNS = {
    "wsl": ["cls_map", "cls_map@prior", "loc_map", "loc_map@centre", "miou"],
    "supervised": ["miou", "pixel_acc", "trimap_miou@w3", "trimap_miou@w10", "trimap_miou", "cls_map", "loc_map"],
    "instance": ["coco_ap_segm", "coco_ap50_segm", "coco_ap75_segm", "coco_ap_bbox", "coco_ap50_bbox", "miou",
                 "cls_map", "loc_map"],
}


def run_one(method: str, recipe: str, runs: Path, seed: int, extra: list[str]) -> dict:
    """One run in a fresh process: its record plus its own wall and CPU seconds (or the error).

    The CPU time is the child's own (``os.wait4``), so it stays right when
    several runs share the machine (``--jobs``).
    """
    command = [sys.executable, "-m", "segbench", "run", "--method", method, "--dataset", "shapes", "--recipe",
               recipe, "--seed", str(seed), "--runs-dir", str(runs), "--quiet", "--force", *extra]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    cpu = usage.ru_utime + usage.ru_stime
    row = {"method": method, "recipe": recipe, "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
    record_line = [line for line in stdout.splitlines() if line.startswith("record: ")]
    if process.returncode != 0 or not record_line:
        row["error"] = (stderr.strip().splitlines() or ["failed"])[-1][:200]
        return row
    record = json.loads(Path(record_line[-1][len("record: "):]).read_text())
    row.update({k: v for k, v in record["metrics"].items() if v is not None})
    row["train_s"] = record.get("timings", {}).get("train_s")
    row["threads"] = record.get("resources", {}).get("threads") or record["config"]["train"].get("threads")
    post = [name for name in record["config"].get("postprocess", {}) if name != "cam_mask"]
    if post:
        row["method"] = "+".join([method, *post])
    return row


def table(rows: list[dict], columns: list[str]) -> str:
    """A Markdown table: method, recipe, times, then the chosen metrics in percent."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    keep = ["method", "recipe", "seed", "threads", "wall_s", "cpu_s", "train_s"]
    metrics = [c for c in columns if c in frame.columns]
    out = frame[[c for c in keep if c in frame.columns]].copy()
    for column in metrics:
        out[column] = (100 * frame[column]).round(1)
    if "error" in frame.columns:
        out["error"] = frame["error"].fillna("")
    return out.to_markdown(index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(FAMILIES), default="wsl")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: the family's)")
    parser.add_argument("--recipe", default="bench")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--runs-dir", default=None, help="where the records go (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="write the Markdown table here (overwrites)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at a time (with --set threads=1, one core each: a run's wall time is then what "
                             "it takes on one core, an upper bound of a two-thread run on an idle machine)")
    parser.add_argument("--postprocess", action="append", default=[], metavar="NAME",
                        help="a post-processor for every run (e.g. densecrf), passed to segbench run")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    methods = args.methods.split(",") if args.methods else FAMILIES[args.family]
    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="segbench-shapes-"))
    extra = [item for pair in args.overrides for item in ("--set", pair)]
    extra += [item for name in args.postprocess for item in ("--postprocess", name)]
    grid = [(method, int(seed)) for method in methods for seed in args.seeds.split(",")]

    def one(item: tuple[str, int]) -> dict:
        row = run_one(item[0], args.recipe, runs, item[1], extra)
        print(json.dumps(row), file=sys.stderr, flush=True)
        return row

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        rows = list(pool.map(one, grid))
    load = os.getloadavg()
    text = (f"{table(rows, COLUMNS[args.family])}\n\nshapes, recipe `{args.recipe}`; wall and CPU seconds per run "
            f"(fresh process, {args.jobs} at a time{', ' + ' '.join(extra) if extra else ''}); load average at the "
            f"end {load[0]:.1f}; records in {runs}\n")
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
