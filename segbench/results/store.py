"""A directory of run records, one ``{run_id}.json`` per run, written atomically.

Every write goes to a temporary file in the same directory (``.*.tmp``, which
readers ignore), is flushed to disk, then renamed over the final name, so a
reader (the leaderboard) never sees half a record and concurrent writers of
different runs never lose one. A forced re-run gets a new file
(``{run_id}-2.json``, ``-3``, ...) claimed with an exclusive create: nothing a
user produced is overwritten.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import secrets
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

from segbench.errors import SegbenchError
from segbench.results.record import RUN_ID_RE, RecordError, RunRecord, base_run_id

RUNS_DIR_ENV = "SEGBENCH_RUNS_DIR"
DEFAULT_RUNS_DIR = "runs"


class StoreError(SegbenchError):
    """The runs directory cannot be written, or a run record is missing or would be overwritten."""


class RecordWarning(UserWarning):
    """A file in the runs directory was skipped because it is not a valid run record."""


def default_runs_dir() -> Path:
    """``$SEGBENCH_RUNS_DIR``, else ``./runs``."""
    return Path(os.environ.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR)


class RunStore:
    """Run records under ``root`` (default :func:`default_runs_dir`)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else default_runs_dir()

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    # -- paths -------------------------------------------------------------------------------------
    def path_for(self, run_id: str) -> Path:
        """The file of run ``run_id`` (which must be a valid run id: no path tricks)."""
        if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
            raise StoreError(f"invalid run id {run_id!r}: expected 16 hex characters with an optional -N suffix")
        return self.root / f"{run_id}.json"

    # -- writing -----------------------------------------------------------------------------------
    def write(self, record: RunRecord) -> Path:
        """Create or update the record of ``record.run_id`` atomically; returns its path.

        Updating is allowed only for the same run attempt (same ``created_at``),
        e.g. ``running`` -> ``finished``. A file of another attempt is never
        replaced: write a re-run with :meth:`write_new`.
        """
        path = self.path_for(record.run_id)
        if path.exists():
            try:
                existing = RunRecord.load(path)
            except RecordError as exc:
                raise StoreError(f"{path} exists and is not a valid run record ({exc}); move it away first") from None
            if existing.created_at != record.created_at:
                raise StoreError(
                    f"{path} already holds run {record.run_id} started {existing.created_at} ({existing.status}); "
                    "a re-run must be written as a new record (--force)"
                )
        self._replace(path, record.to_json())
        return path

    def write_new(self, record: RunRecord) -> RunRecord:
        """Write ``record`` into a file that did not exist: ``{run_id}.json``, else ``-2``, ``-3``...

        Returns the record with the run id it got. The name is claimed
        atomically (hard link of a complete temporary file, or ``O_EXCL``), so
        concurrent re-runs of one config and seed each get their own file.
        """
        self._ensure_dir()
        base = base_run_id(record.run_id)
        number = 1
        while True:
            run_id = base if number == 1 else f"{base}-{number}"
            number += 1
            path = self.path_for(run_id)
            if path.exists():
                continue
            candidate = dataclasses.replace(record, run_id=run_id)
            if self._create_exclusive(path, candidate.to_json()):
                return candidate

    def _ensure_dir(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create runs directory {self.root}: {_reason(exc)}") from None
        if not self.root.is_dir():
            raise StoreError(f"runs directory {self.root} is not a directory")

    def _temp_file(self, stem: str, text: str) -> Path:
        """A complete, fsynced temporary file ``.{stem}.<random>.tmp`` in the runs directory."""
        self._ensure_dir()
        tmp = self.root / f".{stem}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write run records to {self.root}: {_reason(exc)}") from None
        return tmp

    def _replace(self, path: Path, text: str) -> None:
        tmp = self._temp_file(path.stem, text)
        try:
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write run records to {self.root}: {_reason(exc)}") from None
        _fsync_dir(self.root)

    def _create_exclusive(self, path: Path, text: str) -> bool:
        """Create ``path`` with ``text`` unless it exists; False when another writer got there first."""
        tmp = self._temp_file(path.stem, text)
        try:
            os.link(tmp, path)  # atomic, fails if path exists, and the file is complete when it appears
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise StoreError(f"cannot write run records to {self.root}: {_reason(exc)}") from None
            return self._create_exclusive_fallback(path, text)  # file systems without hard links
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        return True

    def _create_exclusive_fallback(self, path: Path, text: str) -> bool:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            return False
        except OSError as exc:
            raise StoreError(f"cannot write run records to {self.root}: {_reason(exc)}") from None
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    # -- reading -----------------------------------------------------------------------------------
    def get(self, run_id: str) -> RunRecord:
        """The record of ``run_id``, or of the one run whose id starts with ``run_id`` (a hex prefix)."""
        if not self.root.is_dir():
            raise StoreError(f"runs directory {self.root} does not exist (--runs-dir or SEGBENCH_RUNS_DIR); "
                             f"no run '{run_id}' there")
        if isinstance(run_id, str) and not RUN_ID_RE.match(run_id) and re.fullmatch(r"[0-9a-f]{1,16}", run_id):
            matches = sorted(p for p in self.root.glob(f"{run_id}*.json") if not p.name.startswith("."))
            if len(matches) > 1:
                names = ", ".join(p.stem for p in matches[:5])
                raise StoreError(f"run id prefix '{run_id}' is ambiguous in {self.root}: {names}")
            if not matches:
                raise StoreError(f"no run record '{run_id}' in {self.root}")
            return RunRecord.load(matches[0])
        path = self.path_for(run_id)
        if not path.exists():
            raise StoreError(f"no run record '{run_id}' in {self.root}")
        return RunRecord.load(path)

    def iter_records(
        self, status: str | None = None, on_error: Callable[[Path, str], None] | None = None
    ) -> Iterator[RunRecord]:
        """Every valid record (of ``status``, when given), in file-name order.

        Temporary files are ignored; a file that is not a valid record is
        skipped with a :class:`RecordWarning` (or reported to ``on_error(path,
        message)``), so a leaderboard can read while runs are writing.
        """
        if not self.root.is_dir():
            return
        for path in sorted(self.root.glob("*.json")):
            if path.name.startswith(".") or not path.is_file():
                continue
            try:
                record = RunRecord.load(path)
            except RecordError as exc:
                message = f"skipping {exc}"
                if on_error is not None:
                    on_error(path, message)
                else:
                    warnings.warn(message, RecordWarning, stacklevel=2)
                continue
            if status is None or record.status == status:
                yield record

    def find(self, config_id: str | None = None, seed: int | None = None, status: str | None = None,
             **fields: object) -> list[RunRecord]:
        """Records matching ``config_id``, ``seed``, ``status`` and any other top-level fields, oldest first."""
        wanted = dict(fields)
        if config_id is not None:
            wanted["config_id"] = config_id
        if seed is not None:
            wanted["seed"] = seed
        found = [
            r for r in self.iter_records(status=status)
            if all(getattr(r, key, r.extra.get(key)) == value for key, value in wanted.items())
        ]
        return sorted(found, key=lambda r: (r.created_at, _suffix(r.run_id)))


def _suffix(run_id: str) -> int:
    _, _, tail = run_id.partition("-")
    return int(tail) if tail else 1


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable (POSIX); best effort elsewhere."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


__all__ = ["DEFAULT_RUNS_DIR", "RUNS_DIR_ENV", "RecordWarning", "RunStore", "StoreError", "default_runs_dir"]
