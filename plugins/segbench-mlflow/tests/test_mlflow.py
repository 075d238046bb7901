"""The MLflow logger: a tiny run into a local SQLite store, read back with mlflow.search_runs and the client."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from segbench.engine.run import run_experiment
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"steps": 4, "image_size": 32, "num_train": 8, "num_val": 4, "batch_size": 2, "threads": 1,
        "log_every": 2, "eval_every": 2}


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """One run logged to the default store (sqlite under the runs directory), and a second of another seed."""
    runs = tmp_path_factory.mktemp("runs")
    saved = {k: os.environ.pop(k, None) for k in ("SEGBENCH_MLFLOW_URI", "MLFLOW_TRACKING_URI")}
    os.environ["SEGBENCH_LOGGERS"] = "mlflow"
    try:
        outcomes = [run_experiment("weldon", "shapes", overrides=TINY, runs=runs, progress=False, seed=seed)
                    for seed in (0, 1)]
    finally:
        os.environ.pop("SEGBENCH_LOGGERS")
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    return runs, outcomes


def test_registered_from_the_entry_point_without_importing_mlflow():
    assert get_registry().plugins["mlflow"].ok
    code = "import sys, segbench_mlflow; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_search_runs_finds_each_run_with_its_params_tags_and_final_metrics(logged):
    import mlflow

    runs, outcomes = logged
    uri = f"sqlite:///{(runs / 'mlflow.db').resolve()}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        table = mlflow.search_runs(experiment_names=["segbench"])
    finally:
        mlflow.set_tracking_uri(previous)
    assert len(table) == 2 and set(table["status"]) == {"FINISHED"}
    row = table[table["tags.segbench.run_id"] == outcomes[0].record["run_id"]].iloc[0]
    assert row["tags.segbench.method"] == "weldon" and row["tags.segbench.seed"] == "0"
    assert row["params.train.steps"] == "4" and row["params.train.eval_every"] == "2"
    assert row["metrics.final/miou"] == pytest.approx(outcomes[0].record["metrics"]["miou"])
    assert row["metrics.final/loc_map_at_centre"] == pytest.approx(outcomes[0].record["metrics"]["loc_map@centre"])


def test_metric_histories_are_the_step_scalars(logged):
    from mlflow.tracking import MlflowClient

    runs, outcomes = logged
    record = outcomes[1].record
    client = MlflowClient(tracking_uri=f"sqlite:///{(runs / 'mlflow.db').resolve()}")
    experiment = client.get_experiment_by_name("segbench")
    found = client.search_runs([experiment.experiment_id],
                               filter_string=f"tags.`segbench.run_id` = '{record['run_id']}'")
    assert len(found) == 1
    def history(key: str) -> tuple[list, list]:
        points = client.get_metric_history(found[0].info.run_id, key)
        return [m.step for m in points], [m.value for m in points]

    for key, curve in (("val/miou", "val/miou"), ("loss_smoothed", "loss")):
        steps, values = history(key)
        assert steps == [s for s, _ in record["curves"][curve]]
        assert values == pytest.approx([v for _, v in record["curves"][curve]])
    assert history("lr")[0] == [2, 4]


def test_a_resumed_run_logs_into_the_same_mlflow_run(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from segbench import hookimpl

    uri = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("SEGBENCH_MLFLOW_URI", uri)
    settings = {**TINY, "eval_every": 0, "log_every": 1, "checkpoint_every": 2}

    @hookimpl
    def run_step(run, step, scalars):
        if step == 3:
            raise KeyboardInterrupt("stopped at step 3")

    registry = get_registry()
    registry.register_plugin(SimpleNamespace(run_step=run_step), "stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            run_experiment("weldon", "shapes", overrides=settings, runs=tmp_path / "runs", progress=False)
    finally:
        registry.pm.unregister(name="stopper")
        registry.plugins.pop("stopper")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("segbench")
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["KILLED"]
    outcome = run_experiment("weldon", "shapes", overrides=settings, runs=tmp_path / "runs", progress=False)
    found = client.search_runs([experiment.experiment_id])
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert found[0].data.tags["segbench.run_id"] == outcome.record["run_id"]
    steps = [m.step for m in client.get_metric_history(found[0].info.run_id, "loss_smoothed")]
    assert steps == [1, 2, 3, 4]  # stopped before logging 3; resumed from 2
