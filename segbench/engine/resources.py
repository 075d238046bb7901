"""What a run cost besides time: peak memory of the process and of the GPU."""

from __future__ import annotations

import sys


def peak_rss_mb() -> float | None:
    """Peak resident set size of this process so far, in MiB (``resource.getrusage``; None where unavailable)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return round(peak * scale / 2**20, 1)


def reset_cuda_peak(device) -> None:
    """Start counting the CUDA peak from now (no-op off CUDA)."""
    if getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)


def cuda_peak_mb(device) -> float | None:
    """``torch.cuda.max_memory_allocated`` of ``device`` in MiB; None off CUDA."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
