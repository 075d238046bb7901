"""Model weights in safetensors, and training checkpoints for resuming a run, all written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from segbench.errors import DataError, WriteError


def write_failure(path: Path, exc: BaseException) -> WriteError:
    """One line for a failed write: the path and the reason (``No space left on device`` also where torch or
    safetensors report a full disk only as an internal error)."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc) \
        else type(exc).__name__
    try:
        folder = path if path.is_dir() else path.parent
        if shutil.disk_usage(folder).free < 1 << 20:
            reason = "No space left on device"
    except OSError:
        pass
    return WriteError(f"cannot write {path}: {reason}")


def save_weights(model, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` to ``path`` (safetensors) through a temp file and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        save_file(_untie(state), tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # safetensors and torch report a full disk as RuntimeError
        raise write_failure(path, exc) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_weights(path: str | os.PathLike) -> dict:
    """A state dict from safetensors or a ``torch.save`` file (read with ``weights_only=True``); a one-line
    DataError naming the file when it is missing or unreadable."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same one-line error
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{path}: cannot read weights: not a safetensors or torch.save file "
                        f"({type(exc).__name__}: {first})") from None
    return state


def load_weights(model, path: str | os.PathLike, strict: bool = True):
    """Load safetensors (or a ``torch.save`` file, read with ``weights_only=True``) into ``model``."""
    path = Path(path)
    state = read_weights(path)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if strict and (missing or unexpected):
        raise DataError(
            f"{path}: weights do not match the model (missing {len(missing)} keys, e.g. {missing[:2]}; "
            f"unexpected {len(unexpected)}, e.g. {unexpected[:2]})"
        )
    return model


def _untie(state: dict) -> dict:
    """safetensors refuses tensors sharing memory: clone the later ones."""
    seen: set[int] = set()
    out = {}
    for key, tensor in state.items():
        ptr = tensor.untyped_storage().data_ptr() if tensor.numel() else None
        if ptr is not None and ptr in seen:
            tensor = tensor.clone()
        elif ptr is not None:
            seen.add(ptr)
        out[key] = tensor
    return out


# -- training checkpoints (resume) --------------------------------------------------------------------
CHECKPOINT_KEEP = 2
CHECKPOINT_FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{8})$")


class CheckpointError(DataError):
    """A checkpoint that cannot be read back (truncated, corrupt, or from another format)."""


def state_dir(record_path: str | os.PathLike) -> Path:
    """The directory of a run's checkpoints and lock: ``{run_id}.ckpt`` beside its record."""
    return Path(record_path).with_suffix(".ckpt")


def lock_is_held(directory: str | os.PathLike) -> bool:
    """Whether a live process holds the run lock in ``directory`` (False when there is no lock at all)."""
    path = Path(directory) / "lock"
    if not path.is_file():
        return False
    try:
        import fcntl
    except ImportError:  # not POSIX: no way to tell; assume alive
        return True
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return False


def run_state(record: Any, record_path: str | os.PathLike) -> str:
    """A record's status as a reader should see it: ``stale`` for a ``running`` record whose process is gone (no
    process holds its lock: killed, out of memory, the machine went down), else its status."""
    if record.status == "running" and not lock_is_held(state_dir(record_path)):
        return "stale"
    return record.status


def save_checkpoint(directory: str | os.PathLike, step: int, model, state: dict, keep: int = CHECKPOINT_KEEP) -> Path:
    """Write ``directory/step-NNNNNNNN/`` atomically and keep the newest ``keep`` checkpoints.

    The model's weights go to ``model.safetensors``; ``state`` (optimizer,
    scheduler, RNG states, step, data position: tensors and plain values
    only) to ``state.pt`` with ``torch.save``; ``meta.json`` holds the step
    and the sha256 of both files. Everything is written into a hidden
    temporary directory, synced, then renamed into place (``os.replace``), so
    a crash leaves either the whole checkpoint or none.
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    final = directory / f"step-{step:08d}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".step-{step:08d}.", suffix=".tmp", dir=directory))
    except OSError as exc:
        raise write_failure(final, exc) from None
    try:
        weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(_untie(weights), str(tmp / "model.safetensors"))
        torch.save({**state, "format": CHECKPOINT_FORMAT, "step": step}, tmp / "state.pt")
        meta = {"format": CHECKPOINT_FORMAT, "step": step,
                "sha256": {name: _sha256(tmp / name) for name in ("model.safetensors", "state.pt")}}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        for name in ("model.safetensors", "state.pt", "meta.json"):
            _fsync(tmp / name)
        if final.exists():  # the same step again (a resumed run): the new one replaces it
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync(directory)
    except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as an internal RuntimeError
        raise write_failure(final, exc) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    prune_checkpoints(directory, keep)
    return final


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """The ``step-NNNNNNNN`` checkpoints in ``directory``, newest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def prune_checkpoints(directory: str | os.PathLike, keep: int = CHECKPOINT_KEEP) -> None:
    """Remove all but the newest ``keep`` checkpoints, and temporary directories of interrupted writes."""
    directory = Path(directory)
    for old in list_checkpoints(directory)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    for tmp in directory.glob(".step-*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict]:
    """``(model state, training state)`` of one checkpoint directory; a :class:`CheckpointError` naming it if
    a file is missing, truncated or altered (sha256 mismatch)."""
    import torch
    from safetensors.torch import load_file

    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        for name, digest in meta["sha256"].items():
            if _sha256(path / name) != digest:
                raise CheckpointError(f"checkpoint {path}: {name} is truncated or altered (sha256 mismatch)")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"checkpoint {path}: format {meta.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        weights = load_file(str(path / "model.safetensors"))
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint gets the same one-line error
        raise CheckpointError(f"checkpoint {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    return weights, state


def latest_checkpoint(directory: str | os.PathLike, warn: Callable[[str], None] = lambda message: None
                      ) -> tuple[Path, dict, dict] | None:
    """The newest readable checkpoint ``(path, model state, training state)``, or None.

    A checkpoint that cannot be read is reported through ``warn`` by name,
    renamed ``*.corrupt`` (kept for inspection, never loaded again) and the
    previous one is tried; when none is left, ``warn`` says the run starts
    from scratch.
    """
    candidates = list_checkpoints(directory)
    for path in candidates:
        try:
            weights, state = load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"warning: {exc}; falling back to the previous checkpoint")
            try:
                os.replace(path, path.with_name(path.name + ".corrupt"))
            except OSError:
                pass
            continue
        return path, weights, state
    if candidates:
        warn(f"warning: no usable checkpoint in {directory}; starting from step 0")
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class RunLock:
    """An exclusive lock on a run's state directory (``fcntl.flock``), held while the run is alive.

    The kernel drops it when the process dies (even ``kill -9``), so a record
    left ``running`` by a dead process can be resumed, while a live one cannot
    be resumed twice.
    """

    def __init__(self, path: Path, handle) -> None:
        self.path, self._handle = path, handle

    @classmethod
    def acquire(cls, directory: str | os.PathLike) -> "RunLock | None":
        """The lock of ``directory`` (created if needed), or None when another process holds it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "lock"
        handle = open(path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, resuming a live run is the user's business
            return cls(path, handle)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        return cls(path, handle)

    def release(self, remove_directory: bool = False) -> None:
        """Drop the lock; with ``remove_directory`` delete the state directory (checkpoints included) first."""
        if self._handle is None:
            return
        if remove_directory:
            shutil.rmtree(self.path.parent, ignore_errors=True)
        self._handle.close()
        self._handle = None
