"""Data parallelism with torch.distributed: process group, DDP wrapping, and metric states across processes.

``torchrun --nproc_per_node N -m segbench run ...`` (or ``segbench run --nproc N``)
starts N processes; each trains on its share of every batch order
(:class:`segbench.engine.data.TrainSampler`) and evaluates a contiguous shard of
the evaluation split (:class:`segbench.engine.data.ShardedEvalSampler`); metric
states are gathered on rank 0, which computes the metrics and alone writes
records and checkpoints. Backend: NCCL on CUDA (one GPU per process,
``cuda:LOCAL_RANK``), gloo on the CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from segbench.errors import ConfigError

REDUCTIONS = ("sum", "cat", "max", "min")


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world_size`` (1 = no data parallelism)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"
    owned: bool = False  # this code initialised the process group and tears it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistInfo()


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by torchrun, else 1."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def current() -> DistInfo:
    """The process group already initialised in this process, else :data:`SINGLE`."""
    import torch.distributed as tdist

    if not (tdist.is_available() and tdist.is_initialized()):
        return SINGLE
    backend = tdist.get_backend()
    device = "cpu"
    if backend == "nccl":
        import torch

        device = f"cuda:{torch.cuda.current_device()}"
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")),
                    backend, device)


def setup(device) -> tuple[DistInfo, Any]:
    """Join the process group torchrun describes (``WORLD_SIZE`` > 1); returns ``(info, device of this process)``.

    CUDA runs use NCCL and ``cuda:LOCAL_RANK``; CPU runs use gloo. Without
    torchrun's environment this is a no-op returning :data:`SINGLE`.
    """
    import torch
    import torch.distributed as tdist

    info = current()
    if info.enabled:
        return info, torch.device(info.device) if info.backend == "nccl" else device
    if launched_world_size() <= 1:
        return SINGLE, device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {local_rank} of this node has no GPU: {torch.cuda.device_count()} CUDA "
                              f"device(s) for {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    tdist.init_process_group(backend=backend)
    return DistInfo(tdist.get_rank(), tdist.get_world_size(), local_rank, backend, str(device), owned=True), device


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` joined it."""
    import torch.distributed as tdist

    if info.owned and tdist.is_initialized():
        tdist.destroy_process_group()


def check_nproc(nproc: int, device: str = "auto") -> str:
    """The device kind (``cuda`` or ``cpu``) for ``nproc`` processes; a one-line ``ConfigError`` if too many.

    CUDA: one GPU per process, at most ``torch.cuda.device_count()``. CPU: at
    most ``os.cpu_count()`` processes (one core each; more only slows down).
    """
    if nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {nproc}")
    import torch

    kind = "cuda" if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if kind == "cuda":
        available = torch.cuda.device_count()
        if nproc > available:
            raise ConfigError(f"--nproc {nproc} needs {nproc} GPUs; this machine has {available} CUDA device(s)")
    else:
        available = os.cpu_count() or 1
        if nproc > available:
            raise ConfigError(f"--nproc {nproc} on the CPU needs {nproc} cores (one per process); this machine "
                              f"has {available}")
    return kind


# -- collectives ------------------------------------------------------------------------------------------
def broadcast(obj: Any, info: DistInfo, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (pickled)."""
    if not info.enabled:
        return obj
    import torch.distributed as tdist

    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (pickled)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] = [None] * info.world_size
    tdist.all_gather_object(out, obj)
    return out


def gather(obj: Any, info: DistInfo) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
    if not info.enabled:
        return [obj]
    import torch.distributed as tdist

    out: list[Any] | None = [None] * info.world_size if info.is_main else None
    tdist.gather_object(obj, out, dst=0)
    return out


def any_true(flags: Sequence[bool], info: DistInfo) -> list[bool]:
    """Element-wise "true on some rank" of a few flags (one small all-reduce)."""
    if not info.enabled:
        return [bool(f) for f in flags]
    import torch
    import torch.distributed as tdist

    tensor = torch.tensor([float(bool(f)) for f in flags], device=info.device)
    tdist.all_reduce(tensor, op=tdist.ReduceOp.MAX)
    return [bool(v) for v in tensor.tolist()]


# -- metrics ----------------------------------------------------------------------------------------------
def check_distributable(metrics: Mapping[str, Any], world_size: int) -> None:
    """Every metric must expose ``state_tensors()``, ``load_state_tensors()`` and ``state_reductions``."""
    if world_size <= 1:
        return
    for name, metric in metrics.items():
        reductions = getattr(metric, "state_reductions", None)
        if not (hasattr(metric, "state_tensors") and hasattr(metric, "load_state_tensors") and reductions):
            raise ConfigError(f"metric '{name}' has no state_tensors()/load_state_tensors()/state_reductions, so it "
                              f"cannot be computed over {world_size} processes; evaluate with one process")
        bad = sorted(set(reductions.values()) - set(REDUCTIONS))
        if bad:
            raise ConfigError(f"metric '{name}': unknown state reduction(s) {bad}; known: {', '.join(REDUCTIONS)}")


def merge_states(states: Sequence[Mapping[str, Any]], reductions: Mapping[str, str]) -> dict[str, Any]:
    """One state from per-rank states (rank order): ``sum``/``max``/``min`` element-wise, ``cat`` along dim 0."""
    import torch

    merged: dict[str, Any] = {}
    for key, op in reductions.items():
        tensors = [torch.as_tensor(state[key]) for state in states]
        if op == "cat":
            kept = [t for t in tensors if t.numel()] or tensors[:1]
            merged[key] = torch.cat(kept) if len(kept) > 1 else kept[0].clone()
            continue
        out = tensors[0].clone()
        for tensor in tensors[1:]:
            if op == "sum":
                out += tensor
            elif op == "max":
                out = torch.maximum(out, tensor)
            else:
                out = torch.minimum(out, tensor)
        merged[key] = out
    return merged


def gather_metrics(metrics: Mapping[str, Any], info: DistInfo) -> None:
    """Replace the states of rank 0's metrics by the merge of every rank's (contiguous shards: dataset order)."""
    if not info.enabled:
        return
    local = {name: {k: v.cpu() if hasattr(v, "cpu") else v for k, v in metric.state_tensors().items()}
             for name, metric in metrics.items()}
    everyone = gather(local, info)
    if not info.is_main:
        return
    for name, metric in metrics.items():
        metric.load_state_tensors(merge_states([states[name] for states in everyone], metric.state_reductions))


# -- training ---------------------------------------------------------------------------------------------
def training_module(model, info: DistInfo, device, sync_bn: bool = False):
    """``(callable(images, targets) -> losses, sync_bn in effect)``: ``model.loss`` itself with one process,
    else a DistributedDataParallel wrapper whose forward is ``model.loss``.

    ``sync_bn`` converts batch norms to SyncBatchNorm (timm's converter, so
    timm's BatchNormAct layers keep their activation); CUDA only, since
    PyTorch synchronises batch statistics only on GPUs: on the CPU it is
    ignored with a warning.
    """
    if not info.enabled:
        return model.loss, False
    import warnings

    import torch
    from torch.nn.parallel import DistributedDataParallel

    class LossForward(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, images, targets):
            return self.inner.loss(images, targets)

    synced = False
    if sync_bn:
        if device.type == "cuda":
            from timm.layers import convert_sync_batchnorm

            convert_sync_batchnorm(model)  # replaces children in place; parameters are the same objects
            synced = True
        else:
            warnings.warn("sync_bn needs CUDA (PyTorch synchronises batch norm statistics only on GPUs); "
                          "running with per-process batch norm", stacklevel=2)
    wrapper = DistributedDataParallel(
        LossForward(model),
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=True,  # methods may leave parameters out of the loss (e.g. prediction-only heads)
    )
    return wrapper, synced
