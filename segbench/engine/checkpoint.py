"""Model weights in safetensors, written atomically."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from segbench.errors import DataError


def save_weights(model, path: str | os.PathLike) -> Path:
    """Write ``model.state_dict()`` to ``path`` (safetensors) through a temp file and a rename."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(_untie(state), tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_weights(model, path: str | os.PathLike, strict: bool = True):
    """Load safetensors (or a ``torch.save`` file, read with ``weights_only=True``) into ``model``."""
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
        raise DataError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
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
