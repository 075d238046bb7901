"""Step logging: the ``run_step`` scalars into ``{run_id}.log.csv`` and the logger hooks, which never break a run.

Every ``log_every`` steps (and after each validation) rank 0 writes one CSV
row (``step`` then one column per scalar, columns in the order they first
appear; a new column rewrites the header) and calls the ``run_step`` hook.
Resuming from step S first drops the rows after S, so the file never holds
a step twice. :class:`LoggerHooks` calls each plugin's ``run_started`` /
``run_step`` / ``run_finished`` on its own: one that raises is named on
stderr once and left out for the rest of the run. Logger plugins shipped with
segbench log only when asked (:func:`logger_enabled`): installing them costs
a run nothing.
"""

from __future__ import annotations

import csv
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, TextIO

ENV_LOGGERS = "SEGBENCH_LOGGERS"


def logger_enabled(name: str, *also: str) -> bool:
    """Whether logger plugin ``name`` is asked for: named in ``$SEGBENCH_LOGGERS`` (comma-separated, or ``all``),
    or one of the environment variables ``also`` (its own location, e.g. ``SEGBENCH_MLFLOW_URI``) is set."""
    wanted = {part.strip() for part in os.environ.get(ENV_LOGGERS, "").split(",") if part.strip()}
    return name in wanted or "all" in wanted or any(os.environ.get(var) for var in also)


class LoggerHooks:
    """The logger hooks of a registry's plugins, each implementation guarded; a failing plugin is switched off."""

    def __init__(self, pm: Any, stderr: TextIO | None = None) -> None:
        self.pm, self.stderr = pm, stderr
        self.off: dict[str, str] = {}  # plugin name -> the error that switched it off

    def __call__(self, hook: str, **kwargs: Any) -> None:
        """Call ``hook`` on every plugin still on, the last registered first (pluggy's order)."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if impl.plugin_name in self.off:
                continue
            try:
                impl.function(**{name: kwargs[name] for name in impl.argnames})
            except Exception as exc:  # noqa: BLE001 - a logger must not end the run
                error = " ".join(f"{type(exc).__name__}: {exc}".split())
                self.off[impl.plugin_name] = error
                print(f"warning: plugin '{impl.plugin_name}' failed in {hook} ({error}); its logging is off for "
                      f"the rest of this run", file=self.stderr or sys.stderr)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return format(value, ".8g") if isinstance(value, float) else str(value)


class StepLog:
    """Rank 0's sink for the scalars of a step: the CSV file and the ``run_step`` hook (``emit(step, scalars)``)."""

    def __init__(self, path: str | os.PathLike | None, emit: Callable[[int, dict], None] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.emit = emit
        self.columns: list[str] = ["step"]

    def start(self, step: int) -> None:
        """Keep the rows of steps up to ``step`` (where training resumes; 0 = none) and their columns."""
        if self.path is None or not self.path.is_file():
            return
        with open(self.path, newline="") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or ["step"])
            rows = [row for row in reader if row.get("step", "").isdigit() and int(row["step"]) <= step]
        self.columns = columns
        self._rewrite(rows)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """One row, then the hook."""
        if self.path is not None:
            new = [key for key in scalars if key not in self.columns]
            row = {"step": str(step), **{k: _cell(v) for k, v in scalars.items()}}
            if new or not self.path.is_file():
                self.columns += new
                self._rewrite(self._rows() + [row])
            else:
                with open(self.path, "a", newline="") as handle:
                    csv.DictWriter(handle, self.columns).writerow(row)
        if self.emit is not None:
            self.emit(step, dict(scalars))

    def _rows(self) -> list[dict]:
        if self.path is None or not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))

    def _rewrite(self, rows: list[dict]) -> None:
        """The whole file through a temporary file and a rename (a reader never sees half a header)."""
        assert self.path is not None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, self.columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def log_path(record_path: str | os.PathLike) -> Path:
    """``{run_id}.log.csv`` beside the record ``{run_id}.json``."""
    return Path(record_path).with_suffix(".log.csv")
