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
from typing import Any

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
        skeleton = _strip(dict(self), tensors)
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


def _strip(obj: Any, tensors: list) -> Any:
    """``obj`` with every dense CPU tensor replaced by a :class:`_Slot`, the tensors appended to ``tensors``
    (other tensors stay in place and pickle as torch pickles them)."""
    import torch

    if isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu" or obj.layout != torch.strided or obj.is_quantized or obj.requires_grad:
            return obj
        tensors.append(obj)
        return _Slot(len(tensors) - 1)
    if isinstance(obj, dict):
        return type(obj)((k, _strip(v, tensors)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_strip(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        items = [_strip(v, tensors) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def _fill(obj: Any, tensors: list) -> Any:
    """The inverse of :func:`_strip`."""
    if isinstance(obj, _Slot):
        return tensors[obj.index]
    if isinstance(obj, dict):
        for key, value in obj.items():
            obj[key] = _fill(value, tensors)
        return obj
    if isinstance(obj, list):
        return [_fill(v, tensors) for v in obj]
    if isinstance(obj, tuple):
        items = [_fill(v, tensors) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return obj


def _pack(tensors: list) -> tuple[Any, list[tuple]]:
    """One uint8 buffer holding every tensor (shared memory in a worker) and how to cut it up again.

    Each tensor is copied in its own memory order (a Fortran-ordered mask from
    pycocotools stays Fortran-ordered), so the copy is a plain memcpy and the
    tensor arrives with the strides it left with.
    """
    import torch

    layout, offset = [], 0
    for tensor in tensors:
        subclass = type(tensor) if type(tensor) is not torch.Tensor else None
        state = dict(tensor.__dict__) if subclass is not None else None
        order = _memory_order(tensor)
        stored = tuple(tensor.shape[d] for d in order)
        layout.append((offset, tensor.dtype, stored, order, subclass, state))
        offset += -(-tensor.numel() * tensor.element_size() // ALIGN) * ALIGN
    if torch.utils.data.get_worker_info() is not None:
        buffer = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(max(offset, 1)))
    else:
        buffer = torch.empty(max(offset, 1), dtype=torch.uint8)
    with torch.no_grad():
        for tensor, entry in zip(tensors, layout):
            _view(buffer, entry[:3]).copy_(tensor.as_subclass(torch.Tensor).permute(entry[3]))
    return buffer, layout


def _memory_order(tensor) -> tuple[int, ...]:
    """The dimensions from the slowest to the fastest in memory, when that makes a dense block; else 0, 1, ..."""
    order = tuple(sorted(range(tensor.dim()), key=lambda d: -tensor.stride(d)))
    return order if tensor.permute(order).is_contiguous() else tuple(range(tensor.dim()))


def _view(buffer, entry: tuple):
    """The C-contiguous ``[shape]`` tensor of ``dtype`` at ``offset`` in ``buffer``."""
    offset, dtype, shape = entry
    nbytes = math.prod(shape) * dtype.itemsize
    return buffer[offset:offset + nbytes].view(dtype).view(shape)


def _unpack(skeleton: Any, buffer, layout: list[tuple]) -> Batch:
    """Rebuild a :class:`Batch`: its tensors are views of ``buffer``, small ones copies."""
    tensors = []
    for entry in layout:
        order = entry[3]
        tensor = _view(buffer, entry[:3]).permute(sorted(range(len(order)), key=order.__getitem__))
        if tensor.numel() * tensor.element_size() < COPY_BELOW:
            tensor = tensor.clone()
        subclass, state = entry[4], entry[5]
        if subclass is not None:
            tensor = tensor.as_subclass(subclass)
            tensor.__dict__.update(state)
        tensors.append(tensor)
    return Batch(_fill(skeleton, tensors))
