"""Region pooling for weakly supervised class maps: class-wise pooling and WELDON max+min pooling.

Shared by WELDON (Durand et al., CVPR 2016) and WILDCAT (Durand et al., CVPR 2017).
A map of ``n = h * w`` spatial cells is a bag of ``n`` regions; each cell's value
is that region's score for one class.

How ``k`` is read (:func:`resolve_k`), following WILDCAT's reference code
(``get_positive_k``) by *value*, not by Python type, so that ``--set kmax=3``
and ``--set kmax=3.0`` mean the same thing:

* ``0 < k < 1``: a fraction of the regions, ``k_n = floor(k * n + 0.5)``
  (round half up), clamped to ``[1, n]``. WILDCAT uses Python's ``round``
  (half to even) and may give 0 regions on small maps; here at least one
  region is always kept.
* ``k >= 1``: a count; it must be a whole number; counts above ``n`` are
  clamped to ``n`` (so a count of ``n`` or more is global average pooling).
* ``k == 0``: no regions (allowed for ``kmin`` only: disables the min term).

So ``k = 1`` (or ``1.0``) is one region (max pooling), never "all regions".
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import nn

__all__ = ["ClassWisePool2d", "WeldonPool2d", "check_k", "resolve_k", "weldon_pool2d"]


def check_k(k: float, name: str = "k", allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``k`` is a fraction in (0, 1), a whole count >= 1, or (when allowed) 0."""
    if isinstance(k, bool) or not isinstance(k, Real) or not math.isfinite(k):
        raise ValueError(f"{name} must be a number, got {k!r}")
    if k == 0 and allow_zero:
        return
    if k <= 0:
        lowest = "0 (off), " if allow_zero else ""
        raise ValueError(f"{name} must be {lowest}a fraction in (0, 1) or a count >= 1, got {k!r}")
    if k >= 1 and float(k) != math.floor(k):
        raise ValueError(f"{name} >= 1 is a count of regions and must be a whole number, got {k!r}")


def resolve_k(k: float, n: int) -> int:
    """Number of regions out of ``n`` that ``k`` selects (see the module docstring)."""
    if n < 1:
        raise ValueError(f"cannot pool an empty map (n={n})")
    if k == 0:
        return 0
    if k < 1:
        return min(max(int(math.floor(k * n + 0.5)), 1), n)
    return min(int(k), n)


def weldon_pool2d(x: torch.Tensor, kmax: float = 1, kmin: float | None = None, alpha: float = 1.0) -> torch.Tensor:
    """``[B, C, h, w] -> [B, C]``: mean of the ``kmax`` highest cells plus ``alpha`` x mean of the ``kmin`` lowest.

    ``kmin=None`` means ``kmin = kmax`` (WELDON); ``kmin=0`` or ``alpha=0``
    leaves the min term out. Differentiable (gradients flow to the selected
    cells only), any spatial size.
    """
    if x.dim() != 4:
        raise ValueError(f"weldon_pool2d expects [B, C, h, w], got shape {tuple(x.shape)}")
    kmin = kmax if kmin is None else kmin
    check_k(kmax, "kmax")
    check_k(kmin, "kmin", allow_zero=True)
    flat = x.flatten(2)
    n = flat.shape[-1]
    k_hi, k_lo = resolve_k(kmax, n), resolve_k(kmin, n)
    out = flat.topk(k_hi, dim=-1, largest=True, sorted=False).values.mean(-1)
    if k_lo > 0 and alpha != 0:
        out = out + alpha * flat.topk(k_lo, dim=-1, largest=False, sorted=False).values.mean(-1)
    return out


class WeldonPool2d(nn.Module):
    """WELDON / WILDCAT spatial pooling: ``[B, C, h, w] -> [B, C]``.

    Per class: the mean of the ``kmax`` highest region scores plus ``alpha``
    times the mean of the ``kmin`` lowest. WELDON is ``kmin = kmax``,
    ``alpha = 1``; WILDCAT weighs the min term with ``alpha`` (0.7 in its
    paper); ``kmax=1, kmin=0`` is global max pooling. ``k`` is a count
    (whole number >= 1) or a fraction of the regions in (0, 1), see
    :func:`resolve_k` for the rounding.
    """

    def __init__(self, kmax: float = 1, kmin: float | None = None, alpha: float = 1.0) -> None:
        super().__init__()
        kmin = kmax if kmin is None else kmin
        check_k(kmax, "kmax")
        check_k(kmin, "kmin", allow_zero=True)
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"alpha must be a number >= 0, got {alpha!r}")
        self.kmax, self.kmin, self.alpha = kmax, kmin, float(alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return weldon_pool2d(x, self.kmax, self.kmin, self.alpha)

    def extra_repr(self) -> str:
        return f"kmax={self.kmax}, kmin={self.kmin}, alpha={self.alpha}"


class ClassWisePool2d(nn.Module):
    """WILDCAT class-wise pooling: ``[B, C * M, h, w] -> [B, C, h, w]``, the mean of each class's ``M`` maps.

    Channels are grouped class-major: maps ``c * M .. c * M + M - 1`` belong
    to class ``c``. ``M = 1`` returns the input unchanged.
    """

    def __init__(self, num_maps: int = 1) -> None:
        super().__init__()
        if isinstance(num_maps, bool) or not isinstance(num_maps, int) or num_maps < 1:
            raise ValueError(f"num_maps must be an integer >= 1, got {num_maps!r}")
        self.num_maps = num_maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.num_maps == 1:
            return x
        b, cm, h, w = x.shape
        if cm % self.num_maps:
            raise ValueError(f"{cm} channels are not a multiple of num_maps={self.num_maps}")
        return x.view(b, cm // self.num_maps, self.num_maps, h, w).mean(2)

    def extra_repr(self) -> str:
        return f"num_maps={self.num_maps}"
