"""Multi-scale inputs with max fusion, shared by plugins (DeepLab v2's MSC, Deep MIL's test-time scales).

:func:`multiscale_max` runs one network (shared weights) on the batch
rescaled by each factor of ``scales``, resizes every output score map to one
reference size (the output size at scale 1.0, or ``size``) and fuses them by
taking the elementwise maximum, as DeepLab v2's multi-scale inputs (Chen et
al., TPAMI 2018: scales 1, 0.75 and 0.5, score maps bilinearly resized to the
scale-1 map and max-fused at each position). It also returns each scale's
output at its own size, for per-scale losses. :func:`multiscale_max_scores`
is the image-level version (the maximum over scales of ``[B, C]`` scores, as
Deep MIL's test-time multi-scale).

Resizes follow the engine's conventions (``segbench.engine.evaluate``):
bilinear with ``align_corners=False``, sizes ``round(scale * H) x round(scale
* W)`` (as DeepLab's ``multiscale_probabilities``), no antialiasing unless
asked for. Scale 1.0 passes the batch through untouched, so ``scales=[1.0]``
gives exactly ``forward(images)``.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = ["check_scales", "max_over_scales", "multiscale_max", "multiscale_max_scores", "rescale_images",
           "resize_maps", "scaled_size"]


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """``scales`` as a tuple of floats; ``ValueError`` unless it is a non-empty list of finite positive numbers."""
    ok = isinstance(scales, Sequence) and not isinstance(scales, (str, bytes)) and len(scales) > 0 and all(
        isinstance(s, Real) and not isinstance(s, bool) and math.isfinite(s) and s > 0 for s in scales)
    if not ok:
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales!r}")
    return tuple(float(s) for s in scales)


def scaled_size(size: Sequence[int], scale: float, min_size: int = 1) -> tuple[int, int]:
    """``(round(scale * h), round(scale * w))``, each at least ``min_size``."""
    h, w = int(size[0]), int(size[1])
    return max(round(h * scale), min_size), max(round(w * scale), min_size)


def rescale_images(images: torch.Tensor, scale: float, *, antialias: bool = False,
                   min_size: int = 1) -> torch.Tensor:
    """The batch ``[B, 3, H, W]`` resized by ``scale`` (bilinear, ``align_corners=False``; antialiased when
    ``antialias`` and shrinking), each side at least ``min_size``; the batch itself when the size is unchanged."""
    size = tuple(images.shape[-2:])
    target = scaled_size(size, scale, min_size)
    if scale == 1.0 or target == size:
        return images
    return F.interpolate(images, size=target, mode="bilinear", align_corners=False,
                         antialias=antialias and scale < 1.0)


def resize_maps(maps: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Score maps ``[B, C, h, w]`` resized to ``size`` (``align_corners=False`` for the linear modes); the maps
    themselves when they already have that size."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps
    options = {"align_corners": False} if mode in ("linear", "bilinear", "bicubic", "trilinear") else {}
    return F.interpolate(maps, size=size, mode=mode, **options)


def max_over_scales(outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Elementwise maximum of same-shape tensors (one per scale); the tensor itself when there is one.

    The gradient reaches, at each element, the scale(s) holding the maximum
    (split evenly between ties, as ``torch.amax``).
    """
    outputs = list(outputs)
    if not outputs:
        raise ValueError("max_over_scales needs at least one output")
    if len(outputs) == 1:
        return outputs[0]
    return torch.stack(outputs).amax(dim=0)


def _reference(scales: Sequence[float]) -> int:
    """Index of the scale whose output sets the fused size: 1.0 when present, else the one nearest to it."""
    return min(range(len(scales)), key=lambda i: abs(math.log(scales[i])))


def multiscale_max(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float],
    size: Sequence[int] | None = None,
    mode: str = "bilinear",
    *,
    antialias: bool = False,
    min_size: int = 1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Max fusion of score maps over input scales: ``(fused, per_scale)``.

    ``forward`` maps a batch ``[B, 3, h, w]`` to score maps ``[B, C, h', w']``
    (any resolution, e.g. the network's output stride). For each ``s`` in
    ``scales`` it runs on :func:`rescale_images` ``(images, s)``. ``per_scale``
    lists the outputs in the order of ``scales``, each at the size ``forward``
    gave it (for per-scale losses). ``fused`` ``[B, C, *size]`` is their
    elementwise maximum after resizing each to ``size`` (``mode``, bilinear by
    default); ``size`` defaults to the output size at scale 1.0 (or, when 1.0
    is not among the scales, at the scale nearest to it). Gradients flow to
    every scale through ``per_scale`` and, where it holds the maximum,
    through ``fused``.
    """
    scales = check_scales(scales)
    per_scale = [forward(rescale_images(images, s, antialias=antialias, min_size=min_size)) for s in scales]
    if size is None:
        size = tuple(per_scale[_reference(scales)].shape[-2:])
    fused = max_over_scales([resize_maps(out, size, mode) for out in per_scale])
    return fused, per_scale


def multiscale_max_scores(
    forward: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float],
    *,
    antialias: bool = False,
    min_size: int = 1,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Image-level max fusion: ``forward`` maps a batch to scores ``[B, C]`` (any shape that does not depend on
    the input size); returns their elementwise maximum over ``scales`` and the per-scale scores."""
    scales = check_scales(scales)
    per_scale = [forward(rescale_images(images, s, antialias=antialias, min_size=min_size)) for s in scales]
    return max_over_scales(per_scale), per_scale
