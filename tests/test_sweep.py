"""``segbench sweep``: the grid, bad input before anything starts, local and submitit launchers, skipping
finished cells on resubmission, and the summary table.

The end-to-end tests drive the real CLI in subprocesses with two tiny test methods from a plugin put on
PYTHONPATH (``sweep_ok`` learns, ``sweep_boom``'s loss is NaN so its run fails with a record).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from segbench.cli import main
from segbench.errors import ConfigError
from segbench.sweep import SKIPPED, SweepJob, SweepSpec, job_result, parse_names, parse_seeds, run_command
from segbench.sweep_launchers import slurm_parameters, unwrap_failure

TINY = ["--set", "steps=2", "--set", "batch_size=4", "--set", "num_train=8", "--set", "num_val=6",
        "--set", "image_size=48"]

PLUGIN = '''
"""Two tiny methods for the sweep tests: sweep_ok learns a 1x1 conv, sweep_boom's loss is NaN."""
from segbench import MethodSpec, Recipe, hookimpl

RECIPES = (Recipe("quick", "seconds on shapes", train={"steps": 4, "batch_size": 4, "lr": 0.1,
                                                       "optimizer": "sgd", "schedule": "constant"}),)


def build(num_classes, nan=False):
    import torch
    import torch.nn.functional as F

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, num_classes, 1)

        def forward(self, images):
            return self.conv(F.adaptive_avg_pool2d(images, (4, 4)))

        def loss(self, images, targets):
            scores = self(images).amax(dim=(-2, -1))
            labels = torch.stack([t["labels"] for t in targets]).to(scores)
            loss = F.binary_cross_entropy_with_logits(scores, labels)
            return {"bce": loss * float("nan") if nan else loss}

        @torch.no_grad()
        def predict(self, images):
            return [{"scores": m.amax(dim=(-2, -1)), "score_maps": m} for m in self(images)]

    return Tiny()


@hookimpl
def register_methods(register):
    for name, nan in (("sweep_ok", False), ("sweep_boom", True)):
        register(MethodSpec(name=name, build=lambda num_classes, nan=nan: build(num_classes, nan),
                            supervision="image", outputs={"scores", "score_maps"}, recipes=RECIPES,
                            description="sweep test double"))
'''


def in_process(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of a subprocess that sees the test plugin (an entry point on PYTHONPATH)."""
    site = tmp_path_factory.mktemp("site")
    (site / "sweep_fixture.py").write_text(PLUGIN)
    info = site / "segbench_sweep_fixture-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: segbench-sweep-fixture\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[segbench]\nsweepfixture = sweep_fixture\n")
    environ = {k: v for k, v in os.environ.items() if k != "SEGBENCH_RUNS_DIR"}
    environ["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    return environ


def sweep(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segbench", "sweep", *args], env=env, capture_output=True,
                          text=True, timeout=600)


def rows(table: str) -> dict[tuple[str, str], list[str]]:
    """Summary table -> {(method, seed): [status, run, time, error]} (columns are separated by 2+ spaces)."""
    import re

    found = {}
    for line in table.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 7 and cells[0].isdigit():
            found[(cells[1], cells[3])] = cells[4:]
    return found


# -- the grid and its commands ------------------------------------------------------------------
def test_seeds_names_and_commands():
    assert parse_seeds("0-2,5,1") == [0, 1, 2, 5]
    assert parse_names(" weldon, fcn8s,weldon ", "methods") == ["weldon", "fcn8s"]
    for bad in ("x", "3-1", ""):
        with pytest.raises(ConfigError, match="--seeds"):
            parse_seeds(bad)
    spec = SweepSpec(["weldon"], ["shapes"], [0], recipe="bench", overrides=["steps=2", "lr=0.1"],
                     runs_dir=Path("rel/runs"), nproc=4, device="cuda")
    command = run_command(spec, "weldon", "shapes", 3)
    assert command[:4] == [sys.executable, "-m", "segbench", "run"]
    text = " ".join(command[4:])
    assert text.startswith("--method weldon --dataset shapes --recipe bench --seed 3 --runs-dir ")
    assert Path(command[command.index("--runs-dir") + 1]) == Path("rel/runs").absolute()
    assert "--set steps=2 --set lr=0.1" in text and "--device cuda" in text and text.endswith("--nproc 4")
    assert "--nproc" not in run_command(SweepSpec(["weldon"], ["shapes"], [0]), "weldon", "shapes", 0)


def test_submitit_options_map_to_update_parameters():
    params = slurm_parameters(["cpus_per_task=8", "slurm_qos=high", "mem-gb=32", "constraint=volta32gb"],
                              partition="dev", gpus_per_node=2, timeout_min=None)
    assert params == {"slurm_partition": "dev", "gpus_per_node": 2, "cpus_per_task": 8, "slurm_qos": "high",
                      "mem_gb": 32, "slurm_constraint": "volta32gb"}


def test_outcome_of_a_run_from_its_output(tmp_path):
    job = SweepJob(1, "weldon", "shapes", 0, ["segbench"])
    record = {"schema_version": 1, "run_id": "0123456789abcdef", "config_id": "0123456789abcdef",
              "status": "failed", "method": "weldon", "dataset": "shapes", "split": "val", "recipe": "quick",
              "seed": 0, "config": {}, "dataset_identity": {"fingerprint": "f"}, "metrics": {},
              "created_at": "2025-01-01T00:00:00+00:00", "error": "non-finite loss at step 3"}
    path = tmp_path / "0123456789abcdef.json"
    path.write_text(json.dumps(record))
    failed = job_result(job, 1, "", f"run x\nError: non-finite loss at step 3 (record: {path})\n", 2.0)
    assert (failed.status, failed.run_id, failed.error) == ("failed", "0123456789abcdef", "non-finite loss at step 3")
    no_record = job_result(job, 2, "", "some warning\nError: dataset root missing\n\n")
    assert (no_record.status, no_record.error, no_record.run_id) == ("failed", "Error: dataset root missing", None)
    assert job_result(job, 130, "", "").status == "interrupted"
    record.update(status="interrupted", error="stopped by SIGINT at step 9 after a checkpoint")
    path.write_text(json.dumps(record))
    job.command = ["segbench", "run", "--runs-dir", str(tmp_path)]  # no record path printed: the run's id line
    stopped = job_result(job, 130, "", "run 0123456789abcdef: weldon (quick) on shapes\nstopped\naborted\n")
    assert (stopped.status, stopped.run_id, stopped.error) == (
        "interrupted", "0123456789abcdef", "stopped by SIGINT at step 9 after a checkpoint")
    record.update(status="finished", error=None)
    path.write_text(json.dumps(record))
    reused = job_result(job, 0, f"identical run already finished: {path} (use --force)\nrecord: {path}\n", "")
    assert (reused.status, reused.run_id, reused.error) == (SKIPPED, "0123456789abcdef", None)
    assert job_result(job, 0, f"weldon ...\nrecord: {path}\n", "").status == "finished"


def test_the_command_error_is_found_in_submitits_failure_message():
    # the shape of submitit's FailedJobError text for a failed CommandFunction (submitit 1.5)
    message = textwrap.dedent("""\
        Job (task=0) failed during processing with trace:
        ----------------------
        subprocess.CalledProcessError: Command '['python', '-m', 'segbench', 'run']' returned non-zero exit status 2.

        The above exception was the direct cause of the following exception:

        Traceback (most recent call last):
          File "submitit/core/utils.py", line 359, in __call__
            raise FailedJobError(stderr) from subprocess_error
        submitit.core.utils.FailedJobError: run 0123: weldon
        Error: dataset 'voc2012' needs a root directory

        ----------------------
        You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:
          - /tmp/x/1_0_log.err""")
    code, stderr = unwrap_failure(message)
    assert code == 2 and stderr == "run 0123: weldon\nError: dataset 'voc2012' needs a root directory"
    assert unwrap_failure("Command '[x]' died with <Signals.SIGINT: 2>.")[0] == -2


# -- bad input: one line, exit 2, nothing started ----------------------------------------------
def test_dry_run_prints_the_grid_and_starts_nothing(capsys, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = in_process(capsys, "sweep", "--methods", "weldon,fcn8s", "--datasets", "shapes",
                                "--seeds", "0,1", *TINY, "--runs-dir", str(runs), "--dry-run")
    assert code == 0, err
    assert "4 runs: 4 to run, 0 skipped (finished)" in out
    table = [line for line in out.splitlines() if "segbench run --method" in line]
    assert len(table) == 4
    assert "--method fcn8s --dataset shapes --recipe quick --seed 1" in table[3] and "--set image_size=48" in table[3]
    assert not runs.exists()


@pytest.mark.parametrize("args, message", [
    (["--methods", "weldon,weldn"], "Error: unknown method 'weldn'; did you mean 'weldon'"),
    (["--methods", "weldon", "--datasets", "shapes,shape"], "Error: unknown dataset 'shape'; did you mean 'shapes'"),
    (["--methods", "weldon", "--set", "stepz=2"],
     "Error: weldon on shapes: unknown --set key 'stepz'; did you mean steps?"),
    (["--methods", "weldon", "--recipe", "quik"], "Error: weldon on shapes: unknown recipe of method 'weldon' 'quik'"),
    (["--methods", "weldon,fcn8s", "--datasets", "voc2007"], "Error: fcn8s on voc2007: method 'fcn8s' learns from"),
    (["--methods", "weldon", "--seeds", "0,a"], "Error: --seeds expects integers"),
    (["--methods", "weldon", "--launcher", "submitit-local", "--slurm", "nonsense=1"],
     "Error: submitit rejected an executor option: Unknown argument 'nonsense' for executor 'slurm' in parameter "
     "'slurm_nonsense'. Valid arguments:"),
    (["--methods", "weldon", "--launcher", "slurm", "--dry-run", "--slurm", "timeout_min=soon"],
     "Error: submitit rejected an executor option: Parameter \"timeout_min\" expected type <class 'int'>"),
    (["--methods", "weldon", "--launcher", "slurm", "--slurm", "partition"], "Error: --slurm expects key=value"),
    (["--methods", "weldon", "--partition", "dev"], "Error: SLURM options (--slurm, --partition"),
])
def test_bad_input_fails_before_anything_starts(capsys, tmp_path, args, message):
    runs = tmp_path / "runs"
    code, out, err = in_process(capsys, "sweep", *args, "--runs-dir", str(runs))
    assert code == 2 and out == ""
    assert err.startswith(message) and len(err.strip().splitlines()) == 1, err
    assert not runs.exists()


def test_slurm_jobs_with_several_gpus_run_data_parallel(capsys, tmp_path):
    code, out, err = in_process(capsys, "sweep", "--methods", "weldon", "--launcher", "slurm", "--gpus-per-node",
                                "4", "--partition", "gpu", "--slurm", "cpus_per_task=16", "--runs-dir",
                                str(tmp_path), "--dry-run")
    assert code == 0, err
    command = next(line for line in out.splitlines() if "segbench run" in line)
    assert command.rstrip().endswith("--quiet --nproc 4")


# -- end to end ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def first_sweep(env, tmp_path_factory):
    """A local sweep of two cells, two at a time: sweep_ok finishes, sweep_boom fails."""
    runs = tmp_path_factory.mktemp("sweep") / "runs"
    done = sweep(env, "--methods", "sweep_ok,sweep_boom", "--datasets", "shapes", "--seeds", "0", *TINY,
                 "--jobs", "2", "--runs-dir", str(runs))
    return runs, done


def test_local_sweep_reports_each_run(first_sweep, env):
    runs, done = first_sweep
    assert done.returncode == 1, done.stderr
    table = rows(done.stdout)
    ok, boom = table[("sweep_ok", "0")], table[("sweep_boom", "0")]
    assert ok[0] == "finished" and float(ok[2]) > 0
    assert boom[0] == "failed" and boom[3].startswith("non-finite loss at step 1")
    assert "2 runs: 1 finished, 1 failed" in done.stdout
    assert "[2/2]" in done.stderr and "Traceback" not in done.stderr + done.stdout
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in runs.glob("*.json"))}
    assert records["sweep_ok"]["status"] == "finished" and records["sweep_ok"]["run_id"] == ok[1]
    assert records["sweep_boom"]["status"] == "failed" and records["sweep_boom"]["run_id"] == boom[1]
    logs = runs / ".sweep" / "logs"
    assert "non-finite loss" in (logs / "sweep_boom-shapes-s0.err").read_text()
    assert f"record: {runs / ok[1]}.json" in (logs / "sweep_ok-shapes-s0.out").read_text()
    board = subprocess.run([sys.executable, "-m", "segbench", "leaderboard", "--runs-dir", str(runs),
                            "--metric", "cls_map"], env=env, capture_output=True, text=True, timeout=120)
    assert board.returncode == 0 and "sweep_ok" in board.stdout and "sweep_boom" not in board.stdout


def test_resubmitted_sweep_skips_finished_runs_without_starting_them(first_sweep, env):
    runs, _ = first_sweep
    plan = sweep(env, "--methods", "sweep_ok,sweep_boom", "--seeds", "0,1", *TINY, "--runs-dir", str(runs),
                 "--dry-run")
    assert plan.returncode == 0, plan.stderr
    actions = {(line.split()[1], line.split()[3]): line for line in plan.stdout.splitlines() if "segbench run" in line}
    assert SKIPPED in actions[("sweep_ok", "0")] and "run (last: failed)" in actions[("sweep_boom", "0")]
    assert "4 runs: 3 to run, 1 skipped (finished)" in plan.stdout
    log = runs / ".sweep" / "logs" / "sweep_ok-shapes-s0.out"
    before = log.stat().st_mtime_ns
    again = sweep(env, "--methods", "sweep_ok", "--seeds", "0", *TINY, "--runs-dir", str(runs))
    assert again.returncode == 0, again.stderr
    status, run, seconds = rows(again.stdout)[("sweep_ok", "0")][:3]
    assert status == SKIPPED and len(run) == 16 and seconds == "-"  # not started: no time
    assert "1 run: 1 skipped (finished)" in again.stdout
    assert log.stat().st_mtime_ns == before and len(list(runs.glob("*.json"))) == 2


def test_submitit_local_sweep_detects_reused_runs_and_failures(first_sweep, env):
    """The submitit path (CommandFunction jobs on submitit's local executor), without the pre-check."""
    pytest.importorskip("submitit")
    runs, _ = first_sweep
    done = sweep(env, "--methods", "sweep_ok,sweep_boom", "--seeds", "0", *TINY, "--runs-dir", str(runs),
                 "--launcher", "submitit-local", "--jobs", "2", "--no-precheck")
    assert done.returncode == 1, done.stderr
    table = rows(done.stdout)
    assert table[("sweep_ok", "0")][0] == SKIPPED  # the run itself found its identical finished record
    assert table[("sweep_boom", "0")][0] == "failed"
    assert table[("sweep_boom", "0")][3].startswith("non-finite loss at step 1")
    assert "submitted sweep_boom on shapes, seed 0: job" in done.stderr
    assert list((runs / ".sweep" / "submitit").glob("*_log.err"))
    statuses = [json.loads(p.read_text())["status"] for p in runs.glob("*.json")]
    assert statuses.count("finished") == 1 and "failed" in statuses  # nothing ran twice


def test_without_a_recipe_each_cell_gets_its_datasets_default_as_run_does(tmp_path):
    from segbench.sweep import SweepSpec, run_command

    spec = SweepSpec(methods=["weldon"], datasets=["shapes", "voc2007"], seeds=[0], runs_dir=str(tmp_path))
    assert run_command(spec, "weldon", "shapes", 0)[run_command(spec, "weldon", "shapes", 0).index("--recipe") + 1] \
        == "quick"
    command = run_command(spec, "weldon", "voc2007", 0)
    assert command[command.index("--recipe") + 1] == "paper"
    fixed = SweepSpec(methods=["weldon"], datasets=["voc2007"], seeds=[0], runs_dir=str(tmp_path), recipe="bench")
    command = run_command(fixed, "weldon", "voc2007", 0)
    assert command[command.index("--recipe") + 1] == "bench"
