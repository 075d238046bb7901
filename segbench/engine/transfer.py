"""Collated batches that cross from DataLoader workers to the main process in one shared-memory buffer.

A worker hands its batch to the main process by pickling it; torch gives
every tensor its own shared-memory segment, about 0.5 ms each whatever its
size. A sample carries an image and several small targets (labels, ignore
flags, boxes, classes, ...), so a batch of 8 cost ~25 ms to hand over where
its 8 images alone cost ~4 ms. :class:`Batch` packs all its tensors into one
buffer when pickled and unpacks them as views of it, so a batch costs one
segment. With ``workers=0`` nothing is pickled and nothing changes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

ALIGN = 64
"""Byte alignment of each tensor in the buffer (any dtype's view stays aligned)."""

COPY_BELOW = 16 << 10
"""Tensors smaller than this many bytes are copied out of the buffer when unpacked, so that one kept
for long (a box, a label vector) does not keep the whole batch's images alive."""


class Batch(dict):
    """A collated batch (a plain dict) that pickles all its tensors into one buffer."""

    def __copy__(self) -> "Batch":  # a shallow copy (DataLoader's pin_memory) must not pack
        return Batch(self)

    def __reduce__(self):
        tensors: list = []
        skeleton = _map(dict(self), lambda leaf: _take(leaf, tensors))
        if not tensors:
            return Batch, (skeleton,)
        buffer, layout = _pack(tensors)
        return _unpack, (skeleton, buffer, layout)


class _Slot:
    """Stands for the ``index``-th tensor of the buffer inside the pickled skeleton."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self):
        return _Slot, (self.index,)


class _Entry(NamedTuple):
    """Where one tensor lies in the buffer: C-contiguous ``stored`` shape at ``offset``, in memory ``order``."""

    offset: int
    dtype: Any
    stored: tuple[int, ...]
    order: tuple[int, ...]
    subclass: type | None
    state: dict | None


def _map(obj: Any, leaf) -> Any:
    """``obj`` rebuilt through its dicts, lists and tuples (named ones too), each other value replaced by
    ``leaf(value)``."""
    if isinstance(obj, dict):
        return type(obj)((k, _map(v, leaf)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_map(v, leaf) for v in obj]
    if isinstance(obj, tuple):
        items = [_map(v, leaf) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return leaf(obj)


def _take(obj: Any, tensors: list) -> Any:
    """A dense CPU tensor is appended to ``tensors`` and replaced by its :class:`_Slot`; anything else (other
    tensors too: they pickle as torch pickles them) stays."""
    import torch

    if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu" or obj.layout != torch.strided \
            or obj.is_quantized or obj.requires_grad:
        return obj
    tensors.append(obj)
    return _Slot(len(tensors) - 1)


def _pack(tensors: list) -> tuple[Any, list[_Entry]]:
    """One uint8 buffer holding every tensor (shared memory in a worker) and how to cut it up again.

    Each tensor is copied in its own memory order (a Fortran-ordered mask from
    pycocotools stays Fortran-ordered), so the copy is a plain memcpy and the
    tensor arrives with the strides it left with.
    """
    import torch

    layout, offset = [], 0
    for tensor in tensors:
        subclass = type(tensor) if type(tensor) is not torch.Tensor else None
        order = _memory_order(tensor)
        layout.append(_Entry(offset, tensor.dtype, tuple(tensor.shape[d] for d in order), order, subclass,
                             dict(tensor.__dict__) if subclass is not None else None))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    if torch.utils.data.get_worker_info() is not None:
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(offset, 1)))
    else:
        buffer = torch.empty(max(offset, 1), dtype=torch.uint8)
    with torch.no_grad():
        for tensor, entry in zip(tensors, layout):
            _view(buffer, entry).copy_(tensor.as_subclass(torch.Tensor).permute(entry.order))
    return buffer, layout


def _memory_order(tensor) -> tuple[int, ...]:
    """The dimensions from the slowest to the fastest in memory, when that makes a dense block; else 0, 1, ..."""
    order = tuple(sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d)))
    return order if tensor.permute(order).is_contiguous() else tuple(range(tensor.dim()))


def _view(buffer, entry: _Entry):
    """The C-contiguous ``entry.stored`` tensor of ``entry.dtype`` at ``entry.offset`` in ``buffer``."""
    nbytes = math.prod(entry.stored) * entry.dtype.itemsize
    return buffer[entry.offset:entry.offset + nbytes].view(entry.dtype).view(entry.stored)


def _unpack(skeleton: Any, buffer, layout: list[_Entry]) -> Batch:
    """Rebuild a :class:`Batch`: its tensors are views of ``buffer``, small ones copies."""
    tensors = []
    for entry in layout:
        tensor = _view(buffer, entry).permute(sorted(range(len(entry.order)), key=entry.order.__getitem__))
        if tensor.numel() * tensor.element_size() < COPY_BELOW:
            tensor = tensor.clone()
        if entry.subclass is not None:
            tensor = tensor.as_subclass(entry.subclass)
            tensor.__dict__.update(entry.state)
        tensors.append(tensor)
    return Batch(_map(skeleton, lambda leaf: tensors[leaf.index] if isinstance(leaf, _Slot) else leaf))
