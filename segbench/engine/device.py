"""Device choice and mixed precision, one code path for CPU and CUDA."""

from __future__ import annotations

import contextlib

from segbench.errors import ConfigError


def resolve_device(name: str = "auto"):
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device(name)


def autocast(device, amp: str):
    """An autocast context for ``amp`` (bf16 | fp16 | off); mixed precision runs on CUDA only."""
    import torch

    if amp == "off" or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def amp_in_effect(device, amp: str) -> str:
    """The precision a run really used, for the record."""
    return amp if device.type == "cuda" else "off"


def device_name(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine() or "cpu"
