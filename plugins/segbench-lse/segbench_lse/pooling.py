"""Smooth global pooling between average and max: log-sum-exp (Pinheiro and Collobert) and softmax-weighted mean.

Both take a map ``[B, C, h, w]`` of ``n = h * w`` cells to ``[B, C]`` and a
sharpness ``beta > 0``: ``beta -> 0`` gives the average, ``beta -> inf`` the
maximum. ``beta`` is a float, or a tensor of one value per channel ``[C]``
(or a scalar tensor), so it can be learned.

* :func:`lse_pool2d`: ``(1/beta) log( (1/n) sum_i exp(beta z_i) )``, computed
  as ``(logsumexp(beta z) - log n) / beta``, which never overflows: the naive
  formula overflows in float32 once ``beta z`` passes about 88.7.
* :func:`softmax_pool2d`: ``sum_i softmax(beta z)_i z_i``, the mean of the
  cells weighted by a softmax over positions (SPLeaP's soft pooling here).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from segbench.errors import ConfigError

__all__ = ["LSEPool2d", "SoftmaxPool2d", "lse_pool2d", "softmax_pool2d"]


def _beta_view(beta: float | torch.Tensor, x: torch.Tensor) -> float | torch.Tensor:
    if not isinstance(beta, torch.Tensor):
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta!r}")
        return float(beta)
    if beta.dim() == 0:
        return beta
    if beta.shape != (x.shape[1],):
        raise ValueError(f"beta has shape {tuple(beta.shape)}, expected () or ({x.shape[1]},)")
    return beta.view(1, -1, 1)


def _flat(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() != 4:
        raise ValueError(f"{name} expects [B, C, h, w], got shape {tuple(x.shape)}")
    return x.flatten(2)


def lse_pool2d(x: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Log-sum-exp pooling ``[B, C, h, w] -> [B, C]``: ``(1/beta) log(mean(exp(beta x)))`` over positions, stably."""
    flat = _flat(x, "lse_pool2d")
    b = _beta_view(beta, x)
    out = torch.logsumexp(b * flat, dim=-1) - math.log(flat.shape[-1])
    if isinstance(b, torch.Tensor) and b.dim():
        b = b.squeeze(-1)  # [1, C, 1] -> [1, C]
    return out / b


def softmax_pool2d(x: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Softmax-weighted mean ``[B, C, h, w] -> [B, C]``: ``sum_i softmax(beta x)_i x_i`` over positions."""
    flat = _flat(x, "softmax_pool2d")
    weights = torch.softmax(_beta_view(beta, x) * flat, dim=-1)
    return (weights * flat).sum(-1)


class _SharpnessPool(nn.Module):
    """A pooling with a sharpness ``beta`` that is fixed or learned as ``exp(log_beta)`` (always positive)."""

    def __init__(self, beta: float = 5.0, learnable: bool = False, channels: int | None = None) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta <= 0:
            raise ConfigError(f"beta must be a number in (0, inf), got {beta!r}")
        shape = () if channels is None else (int(channels),)
        log_beta = torch.full(shape, math.log(beta))
        if learnable:
            self.log_beta = nn.Parameter(log_beta)
        else:
            self.register_buffer("log_beta", log_beta)
        self.learnable = bool(learnable)

    @property
    def beta(self) -> torch.Tensor:
        """The current sharpness (a scalar tensor, or one value per channel)."""
        return self.log_beta.exp()

    def extra_repr(self) -> str:
        values = self.beta.detach().flatten()
        shown = f"{values.item():.4g}" if values.numel() == 1 else f"[{values.numel()} values]"
        return f"beta={shown}, learnable={self.learnable}"


class LSEPool2d(_SharpnessPool):
    """Log-sum-exp pooling (Pinheiro and Collobert, CVPR 2015), ``[B, C, h, w] -> [B, C]``.

    ``channels=None`` shares one ``beta``; an int gives one per channel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lse_pool2d(x, self.beta.to(x.dtype))


class SoftmaxPool2d(_SharpnessPool):
    """Softmax-weighted mean pooling, ``[B, C, h, w] -> [B, C]``, one ``beta`` per channel when ``channels`` is set."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return softmax_pool2d(x, self.beta.to(x.dtype))
