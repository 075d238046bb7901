"""MLflow logging for segbench runs: ``run_started`` / ``run_step`` / ``run_finished``.

On when asked: ``SEGBENCH_LOGGERS=mlflow`` (or ``all``), or
``SEGBENCH_MLFLOW_URI`` set. The tracking URI is ``$SEGBENCH_MLFLOW_URI``, else ``$MLFLOW_TRACKING_URI``,
else a local SQLite store ``sqlite:///{runs dir}/mlflow.db`` (MLflow 3's file
store is in maintenance mode; SQLite needs no server and works offline), with
artifacts under ``{runs dir}/mlartifacts``. The experiment is
``$SEGBENCH_MLFLOW_EXPERIMENT`` (default ``segbench``); each segbench run is
one MLflow run named by its run id and tagged ``segbench.run_id``, so a
resumed run logs into the same MLflow run. Params are the resolved config
(``train.lr``, ``model.backbone`` ...), metrics the step scalars (``@`` in a
key becomes ``_at_``) and ``final/<metric>`` at the last step. Imports
nothing heavy until a run starts.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from segbench import hookimpl

ENV_URI, ENV_EXPERIMENT = "SEGBENCH_MLFLOW_URI", "SEGBENCH_MLFLOW_EXPERIMENT"
TAG = "segbench.run_id"
_open: dict[str, tuple[Any, str]] = {}  # segbench run id -> (MlflowClient, MLflow run id)


def tracking_uri(run: Any) -> str:
    """The tracking URI a run logs to."""
    found = os.environ.get(ENV_URI) or os.environ.get("MLFLOW_TRACKING_URI")
    return found or f"sqlite:///{(Path(run.record_path).parent / 'mlflow.db').resolve()}"


def metric_key(key: str) -> str:
    """``key`` in the characters MLflow allows (letters, digits, ``_ - . / `` and space)."""
    return re.sub(r"[^\w\-./ ]", "_", key.replace("@", "_at_"))


def _params(config: dict) -> dict[str, str]:
    flat: dict[str, str] = {}
    for section in ("train", "model", "data"):
        for key, value in (config.get(section) or {}).items():
            flat[f"{section}.{key}"] = str(value)[:500]
    return flat


@hookimpl
def run_started(run):
    import logging

    from segbench.engine.steplog import logger_enabled

    if not logger_enabled("mlflow", ENV_URI):
        return
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    for name in ("mlflow", "alembic"):  # a new store announces its tables at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    client = MlflowClient(tracking_uri=tracking_uri(run))
    name = os.environ.get(ENV_EXPERIMENT) or "segbench"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment is not None else client.create_experiment(
        name, artifact_location=(Path(run.record_path).parent / "mlartifacts").resolve().as_uri())
    found = client.search_runs([experiment_id], filter_string=f"tags.`{TAG}` = '{run.run_id}'", max_results=1)
    if found:
        mlflow_id = found[0].info.run_id
        client.update_run(mlflow_id, status="RUNNING")
    else:
        tags = {TAG: run.run_id, "segbench.method": run.method, "segbench.dataset": run.dataset,
                "segbench.recipe": run.recipe, "segbench.seed": str(run.seed), "segbench.config_id": run.config_id}
        mlflow_id = client.create_run(experiment_id, run_name=run.run_id, tags=tags).info.run_id
        params = [Param(k, v) for k, v in _params(run.config).items()]
        for i in range(0, len(params), 100):
            client.log_batch(mlflow_id, params=params[i:i + 100])
    _open[run.run_id] = (client, mlflow_id)


def _log(run_id: str, scalars: dict, step: int) -> None:
    from mlflow.entities import Metric

    client, mlflow_id = _open[run_id]
    now = int(time.time() * 1000)
    metrics = [Metric(metric_key(k), float(v), now, step) for k, v in scalars.items() if v is not None]
    for i in range(0, len(metrics), 1000):
        client.log_batch(mlflow_id, metrics=metrics[i:i + 1000])


@hookimpl
def run_step(run, step, scalars):
    if run.run_id in _open:
        _log(run.run_id, scalars, step)


@hookimpl
def run_finished(run, record):
    if run.run_id not in _open:
        return
    _log(run.run_id, {f"final/{k}": v for k, v in record.get("metrics", {}).items()},
         int(run.config["train"]["steps"]))
    client, mlflow_id = _open.pop(run.run_id)
    status = {"finished": "FINISHED", "interrupted": "KILLED"}.get(record["status"], "FAILED")
    client.set_terminated(mlflow_id, status=status)
