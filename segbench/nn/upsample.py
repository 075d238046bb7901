"""Upsampling blocks shared by plugins: bilinear-initialised transposed convolutions.

``BilinearUpsample(channels, factor)`` is the FCN "deconvolution" layer
(Long et al., CVPR 2015): a ``ConvTranspose2d`` with kernel ``2f - f % 2``,
stride ``f`` and padding ``ceil((f - 1) / 2)``, so an ``[h, w]`` input gives
exactly ``[f h, f w]``. Its weights start as the bilinear kernel on the
channel diagonal (channel ``i`` upsamples channel ``i`` only), the
initialisation of the reference ``surgery.interp``. The input is padded by
one pixel (replicate) and the output cropped by ``f`` pixels on each side,
so at initialisation the layer equals ``F.interpolate(scale_factor=f,
mode="bilinear", align_corners=False)`` everywhere, borders included (a bare
transposed convolution would darken the border, which the reference hides
with its 100-pixel input padding). With ``learnable=False`` the weights are
frozen (``requires_grad=False``), as in the reference models.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(factor: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel of size ``2 * factor - factor % 2`` for an integer ``factor >= 1``."""
    if not isinstance(factor, int) or factor < 1:
        raise ValueError(f"upsampling factor must be a positive integer, got {factor!r}")
    size = 2 * factor - factor % 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    ramp = 1.0 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    return torch.outer(ramp, ramp).to(dtype)


def bilinear_weight(in_channels: int, out_channels: int, factor: int) -> torch.Tensor:
    """A ``ConvTranspose2d`` weight ``[in, out, k, k]``: the bilinear kernel where ``in == out``, zero elsewhere."""
    kernel = bilinear_kernel(factor)
    weight = torch.zeros(in_channels, out_channels, *kernel.shape)
    for i in range(min(in_channels, out_channels)):
        weight[i, i] = kernel
    return weight


class BilinearUpsample(nn.ConvTranspose2d):
    """``x factor`` transposed convolution initialised to bilinear interpolation (see module docstring)."""

    def __init__(self, channels: int, factor: int, learnable: bool = True) -> None:
        kernel = 2 * factor - factor % 2
        super().__init__(channels, channels, kernel_size=kernel, stride=factor,
                         padding=math.ceil((factor - 1) / 2), bias=False)
        self.factor = factor
        self.reset_parameters()
        self.weight.requires_grad_(learnable)

    def reset_parameters(self) -> None:
        """Set the weights back to the bilinear kernel (called by ``__init__``)."""
        if not hasattr(self, "factor"):  # nn.ConvTranspose2d.__init__ calls this before factor is set
            return
        with torch.no_grad():
            self.weight.copy_(bilinear_weight(self.in_channels, self.out_channels, self.factor))

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        """``[B, C, h, w]`` -> ``[B, C, f h, f w]``."""
        f = self.factor
        y = super().forward(F.pad(x, (1, 1, 1, 1), mode="replicate"))
        return y[..., f:-f, f:-f]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, factor={self.factor}, learnable={self.weight.requires_grad}"
