"""Many writers, one runs directory: 8 processes claim and finish records at once while a reader builds the
leaderboard. Nothing is lost, every claimed id is unique, and the reader never crashes, never warns about a
half-written file and never shows an unfinished run."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segbench.cli import main
from segbench.results.leaderboard import LeaderboardError, leaderboard
from segbench.results.store import RunStore

WORKERS = 8
PER_WORKER = 24  # records per worker; half claim one contended run id, half their own
SHARED = "abcdef0123456789"  # the run id every worker's contended claims start from
CONFIG = "0123456789abcdef"

WORKER = r'''
import sys, time
from segbench.results.record import RunRecord, utc_now
from segbench.results.store import RunStore

root, worker, count, shared, config = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
store = RunStore(root)
while not (store.root / "go").exists():  # start together
    time.sleep(0.01)
for i in range(count):
    run_id = shared if i % 2 else f"{worker:08x}{i:08x}"
    record = RunRecord(run_id=run_id, config_id=config, status="running", method="m", dataset="shapes",
                       split="val", recipe="quick", seed=worker * 1000 + i,
                       dataset_identity={"fingerprint": "f"}, metrics={"miou": 0.0})  # 0.0: must never show
    claimed = store.write_new(record)
    time.sleep(0.01)  # "training": the running record stays on disk a while
    claimed.status, claimed.metrics, claimed.finished_at = "finished", {"miou": 0.5}, utc_now()
    store.write(claimed)
    print(claimed.run_id, claimed.seed, flush=True)
'''


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    root.mkdir()
    # a half-written temporary file, as a writer killed mid-write leaves it: readers must ignore it
    (root / f".{SHARED}.0123abcd.tmp").write_text('{"schema_version": 1, "run_id": "ab')
    return root


def read_board(root: Path, errors: list) -> tuple[int, set]:
    """(n of the one leaderboard cell, finished run ids) from a CSV leaderboard; (0, set()) before any finished."""
    try:
        text = leaderboard(root, metric="miou", fmt="csv", percent=False,
                           on_error=lambda path, message: errors.append(message))
    except LeaderboardError:
        return 0, set()
    n = cell_count(text)
    finished = {r.run_id for r in RunStore(root).iter_records(on_error=lambda p, m: errors.append(m))
                if r.status == "finished"}
    return n, finished


def cell_count(text: str) -> int:
    """The n of the one cell of a CSV leaderboard, after checking its mean is the finished runs' 0.5."""
    header, *rows = text.strip().splitlines()
    assert len(rows) == 1, text  # one method, one config: one row
    row = dict(zip(header.split(","), rows[0].split(",")))
    assert float(row["Shapes"]) == 0.5, f"an unfinished run reached the leaderboard:\n{text}"
    return int(row["Shapes n"])


def test_eight_writers_lose_nothing_and_a_reader_never_sees_unfinished_runs(runs, tmp_path, capsys):
    script = tmp_path / "writer.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), str(runs), str(w), str(PER_WORKER), SHARED, CONFIG],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for w in range(WORKERS)]
    errors: list[str] = []
    assert read_board(runs, errors) == (0, set())  # warm up (imports) while the writers start
    time.sleep(0.3)
    (runs / "go").touch()
    counts, seen, reads, cli_reads = [], set(), 0, 0
    deadline = time.monotonic() + 120
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        n, finished = read_board(runs, errors)
        assert seen <= finished, "a finished record disappeared"
        seen, reads = finished, reads + 1
        counts.append(n)
        if reads % 5 == 0:  # the command as a user runs it, in process
            try:
                main(["leaderboard", "--metric", "miou", "--fractions", "--format", "csv", "--runs-dir", str(runs)])
                code = 0
            except SystemExit as exc:
                code = exc.code
            captured = capsys.readouterr()
            assert "warning" not in captured.err and "Traceback" not in captured.err
            assert code == 0 or "no finished runs" in captured.err, captured.err
            if code == 0:
                cell_count(captured.out)
            cli_reads += 1
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs if err]
    assert not errors, errors[:3]
    total = WORKERS * PER_WORKER
    assert counts == sorted(counts), counts  # the cell's n never went down
    assert any(0 < n < total for n in counts) and cli_reads, counts  # the reads did overlap the writes

    claimed = [line.split() for out, _ in outputs for line in out.splitlines()]
    assert len(claimed) == total
    assert len({run_id for run_id, _ in claimed}) == total  # no two writers got the same id
    files = sorted(p.name for p in runs.glob("*.json"))
    assert len(files) == total
    records = [json.loads((runs / name).read_text()) for name in files]
    assert all(r["status"] == "finished" and r["metrics"] == {"miou": 0.5} for r in records)
    assert sorted(r["seed"] for r in records) == sorted(int(seed) for _, seed in claimed)
    contended = [r for r in records if r["run_id"].split("-")[0] == SHARED]
    assert sorted(r["run_id"] for r in contended) == sorted(
        [SHARED] + [f"{SHARED}-{k}" for k in range(2, len(contended) + 1)])  # -2, -3... no gap, no clash
    assert [p.name for p in runs.glob(".*.tmp")] == [f".{SHARED}.0123abcd.tmp"]  # writers left none of theirs
    assert read_board(runs, errors)[0] == total and not errors
