"""The TensorBoard logger: a tiny run's event files, read back with TensorBoard's own EventAccumulator."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segbench.engine.run import run_experiment
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"steps": 4, "image_size": 32, "num_train": 8, "num_val": 4, "batch_size": 2, "threads": 1,
        "log_every": 1, "eval_every": 2}


def _scalars(directory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(directory))
    events.Reload()
    return events, {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_registered_from_the_entry_point():
    assert get_registry().plugins["tensorboard"].ok


def test_import_imports_neither_torch_nor_tensorboard():
    code = "import sys, segbench_tensorboard; print('torch' in sys.modules, 'tensorboard' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_off_unless_asked(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGBENCH_LOGGERS", raising=False)
    monkeypatch.delenv("SEGBENCH_TENSORBOARD_DIR", raising=False)
    run_experiment("weldon", "shapes", overrides={**TINY, "eval_every": 0}, runs=tmp_path, progress=False)
    assert not (tmp_path / "tensorboard").exists()


def test_a_run_writes_its_scalars_config_and_final_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGBENCH_LOGGERS", "tensorboard")
    monkeypatch.delenv("SEGBENCH_TENSORBOARD_DIR", raising=False)
    outcome = run_experiment("weldon", "shapes", overrides=TINY, runs=tmp_path, progress=False)
    record = outcome.record
    events, scalars = _scalars(tmp_path / "tensorboard" / record["run_id"])
    assert [s for s, _ in scalars["loss_smoothed"]] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss_smoothed"]] == pytest.approx([v for _, v in record["curves"]["loss"]])
    assert [s for s, _ in scalars["val/miou"]] == [s for s, _ in record["curves"]["val/miou"]] == [2, 4]
    assert [v for _, v in scalars["val/miou"]] == pytest.approx([v for _, v in record["curves"]["val/miou"]])
    assert scalars["final/miou"][0][0] == 4 and scalars["final/miou"][0][1] == pytest.approx(record["metrics"]["miou"])
    assert {"lr", "images_per_s", "peak_rss_mb", "loss/loss"} <= set(scalars)
    assert "config/text_summary" in events.Tags()["tensors"]


def test_the_directory_can_be_chosen(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGBENCH_LOGGERS", raising=False)
    monkeypatch.setenv("SEGBENCH_TENSORBOARD_DIR", str(tmp_path / "tb"))
    outcome = run_experiment("weldon", "shapes", overrides={**TINY, "eval_every": 0}, runs=tmp_path / "runs",
                             progress=False)
    _, scalars = _scalars(tmp_path / "tb" / outcome.record["run_id"])
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4]


def test_a_resumed_run_shows_each_step_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from segbench import hookimpl

    monkeypatch.setenv("SEGBENCH_LOGGERS", "tensorboard")
    settings = {**TINY, "eval_every": 0, "checkpoint_every": 2}

    @hookimpl
    def run_step(run, step, scalars):  # called before the TensorBoard plugin's (registered later, called first)
        if step == 4:
            raise KeyboardInterrupt("stopped at step 4")

    registry = get_registry()
    registry.register_plugin(SimpleNamespace(run_step=run_step), "stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment("weldon", "shapes", overrides=settings, runs=tmp_path, progress=False)
    finally:
        registry.pm.unregister(name="stopper")
        registry.plugins.pop("stopper")
    outcome = run_experiment("weldon", "shapes", overrides=settings, runs=tmp_path, progress=False)
    assert outcome.record["resumes"][0]["step"] == 2
    _, scalars = _scalars(tmp_path / "tensorboard" / outcome.record["run_id"])
    assert [s for s, _ in scalars["loss_smoothed"]] == [1, 2, 3, 4]  # step 3 of the first attempt purged
    assert [v for _, v in scalars["loss_smoothed"]] == pytest.approx([v for _, v in outcome.record["curves"]["loss"]])
