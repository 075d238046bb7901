"""TensorBoard logging for segbench runs: ``run_started`` / ``run_step`` / ``run_finished``.

On when asked: ``SEGBENCH_LOGGERS=tensorboard`` (or ``all``), or
``SEGBENCH_TENSORBOARD_DIR`` set. Each run then writes event files into ``$SEGBENCH_TENSORBOARD_DIR/{run_id}``
(default: ``tensorboard/{run_id}`` in the runs directory) with torch's
``SummaryWriter``: the step scalars under their names (``loss``, ``lr``,
``val/miou`` ...), the resolved config as text, and the final metrics as
``final/<metric>`` at the last step. A resumed run purges the events logged
after its checkpoint (``purge_step``), so no step is shown twice. Imports
neither torch nor tensorboard until a run starts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segbench import hookimpl

ENV_DIR = "SEGBENCH_TENSORBOARD_DIR"
_writers: dict[str, Any] = {}


def log_dir(run: Any) -> Path:
    """Where run ``run``'s event files go."""
    base = os.environ.get(ENV_DIR) or Path(run.record_path).parent / "tensorboard"
    return Path(base) / run.run_id


@hookimpl
def run_started(run):
    from segbench.engine.steplog import logger_enabled

    if not logger_enabled("tensorboard", ENV_DIR):
        return
    from torch.utils.tensorboard import SummaryWriter

    resumed = run.extra.get("resumed_from")
    writer = SummaryWriter(str(log_dir(run)), purge_step=resumed + 1 if resumed else None)
    writer.add_text("config", "```\n" + json.dumps(run.config, indent=1, default=str) + "\n```", 0)
    _writers[run.run_id] = writer


@hookimpl
def run_step(run, step, scalars):
    writer = _writers.get(run.run_id)
    if writer is None:
        return
    for key, value in scalars.items():
        if value is not None:
            writer.add_scalar(key, value, step)


@hookimpl
def run_finished(run, record):
    writer = _writers.pop(run.run_id, None)
    if writer is None:
        return
    step = int(run.config["train"]["steps"])
    for key, value in record.get("metrics", {}).items():
        if value is not None:
            writer.add_scalar(f"final/{key}", value, step)
    writer.add_text("status", f"{record['status']}" + (f": {record['error']}" if record.get("error") else ""), step)
    writer.close()
