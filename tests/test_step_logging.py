"""Step logging: the run_step hook every log_every steps, {run_id}.log.csv, and loggers that never break a run."""

from __future__ import annotations

import contextlib
import csv
from types import SimpleNamespace

import pytest

from segbench import hookimpl
from segbench.engine.run import run_experiment
from segbench.engine.steplog import StepLog, logger_enabled
from segbench.plugins import get_registry

TINY = {"steps": 4, "image_size": 32, "num_train": 8, "num_val": 4, "batch_size": 2, "threads": 1}
TRAIN_KEYS = ["loss/loss", "loss", "loss_smoothed", "lr", "images_per_s", "peak_rss_mb"]


@contextlib.contextmanager
def plugins(**named):
    """Register in-process plugins (name -> {hook: function}) for the block."""
    registry = get_registry()
    for name, hooks in named.items():
        registry.register_plugin(SimpleNamespace(**{k: hookimpl(f) for k, f in hooks.items()}), name)
    try:
        yield
    finally:
        for name in named:
            registry.pm.unregister(name=name)
            registry.plugins.pop(name)


def recorder(calls: list):
    return {"run_started": lambda run: calls.append(("started", run.run_id)),
            "run_step": lambda run, step, scalars: calls.append(("step", step, scalars)),
            "run_finished": lambda run, record: calls.append(("finished", record["status"]))}


def _rows(path):
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        return reader.fieldnames, list(reader)


def test_run_step_every_log_every_steps_and_after_each_validation_and_the_csv(tmp_path):
    calls: list = []
    with plugins(recorder=recorder(calls)):
        outcome = run_experiment("weldon", "shapes", overrides={**TINY, "log_every": 2, "eval_every": 3},
                                 runs=tmp_path, progress=False)
    steps = [c for c in calls if c[0] == "step"]
    assert calls[0] == ("started", outcome.record["run_id"]) and calls[-1] == ("finished", "finished")
    assert [c[1] for c in steps] == [2, 3, 4]  # 3: validation only; 4: the last step, logged and validated
    assert list(steps[0][2]) == TRAIN_KEYS
    assert all(k.startswith("val/") for k in steps[1][2]) and "val/miou" in steps[1][2]
    assert set(TRAIN_KEYS) < set(steps[2][2]) and "val/miou" in steps[2][2]
    assert steps[0][2]["loss"] == pytest.approx(steps[0][2]["loss/loss"]) and steps[0][2]["lr"] > 0
    assert steps[0][2]["images_per_s"] > 0 and steps[0][2]["peak_rss_mb"] > 0
    assert outcome.record["curves"]["loss"] == [[2, steps[0][2]["loss_smoothed"]], [4, steps[2][2]["loss_smoothed"]]]
    header, rows = _rows(tmp_path / f"{outcome.record['run_id']}.log.csv")
    assert header[:1 + len(TRAIN_KEYS)] == ["step", *TRAIN_KEYS] and "val/miou" in header
    assert [r["step"] for r in rows] == ["2", "3", "4"]
    assert rows[1]["loss"] == "" and float(rows[1]["val/miou"]) == pytest.approx(steps[1][2]["val/miou"])
    assert float(rows[2]["lr"]) == pytest.approx(steps[2][2]["lr"])


def test_log_every_0_logs_nothing(tmp_path):
    calls: list = []
    with plugins(recorder=recorder(calls)):
        outcome = run_experiment("weldon", "shapes", overrides={**TINY, "log_every": 0}, runs=tmp_path,
                                 progress=False)
    assert [c[0] for c in calls] == ["started", "finished"]
    assert outcome.record["curves"] == {"loss": []}
    assert not (tmp_path / f"{outcome.record['run_id']}.log.csv").exists()


def test_a_logger_that_raises_is_named_once_switched_off_and_the_run_finishes(tmp_path, capsys):
    calls: list = []
    broken: list = []

    def run_step(run, step, scalars):
        broken.append(step)
        raise ValueError("disk quota exceeded")

    def run_started(run):
        raise RuntimeError("no server")

    with plugins(recorder=recorder(calls),
                 broken=dict(run_step=run_step, run_finished=lambda run, record: broken.append("finished")),
                 refuses=dict(run_started=run_started, run_step=lambda run, step, scalars: broken.append("x"))):
        outcome = run_experiment("weldon", "shapes", overrides={**TINY, "log_every": 1}, runs=tmp_path,
                                 progress=False)
    assert outcome.record["status"] == "finished" and outcome.path.is_file()
    assert broken == [1]  # off after its first failure: no more steps, no run_finished
    assert [c[1] for c in calls if c[0] == "step"] == [1, 2, 3, 4] and calls[-1] == ("finished", "finished")
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning: plugin")]
    assert lines == [
        "warning: plugin 'refuses' failed in run_started (RuntimeError: no server); its logging is off for the rest "
        "of this run",
        "warning: plugin 'broken' failed in run_step (ValueError: disk quota exceeded); its logging is off for the "
        "rest of this run",
    ]


def test_the_csv_keeps_the_rows_up_to_the_resumed_step_and_grows_its_header(tmp_path):
    path = tmp_path / "run.log.csv"
    log = StepLog(path)
    for step in range(1, 6):
        log.write(step, {"loss": 1.0 / step})
    resumed = StepLog(path)
    resumed.start(3)
    assert [r["step"] for r in _rows(path)[1]] == ["1", "2", "3"]
    resumed.write(4, {"loss": 0.25, "val/miou": 0.5})
    header, rows = _rows(path)
    assert header == ["step", "loss", "val/miou"]
    assert [(r["step"], r["loss"], r["val/miou"]) for r in rows] == [
        ("1", "1", ""), ("2", "0.5", ""), ("3", "0.33333333", ""), ("4", "0.25", "0.5")]
    resumed.start(0)
    assert _rows(path) == (["step", "loss", "val/miou"], [])


def test_loggers_log_only_when_asked(monkeypatch):
    monkeypatch.delenv("SEGBENCH_LOGGERS", raising=False)
    monkeypatch.delenv("SEGBENCH_MLFLOW_URI", raising=False)
    assert not logger_enabled("mlflow", "SEGBENCH_MLFLOW_URI")
    monkeypatch.setenv("SEGBENCH_LOGGERS", "tensorboard, mlflow")
    assert logger_enabled("mlflow") and not logger_enabled("wandb")
    monkeypatch.setenv("SEGBENCH_LOGGERS", "all")
    assert logger_enabled("wandb")
    monkeypatch.setenv("SEGBENCH_LOGGERS", "")
    monkeypatch.setenv("SEGBENCH_MLFLOW_URI", "sqlite:///x.db")
    assert logger_enabled("mlflow", "SEGBENCH_MLFLOW_URI")
