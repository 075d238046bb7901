"""Class-map heads shared by weakly supervised methods (WELDON, WILDCAT, ...)."""

from __future__ import annotations

import torch
from torch import nn

from segbench.nn.pooling import ClassWisePool2d

__all__ = ["ClassMapHead"]


class ClassMapHead(nn.Module):
    """A 1x1 convolution to ``num_classes * maps_per_class`` maps, then the class-wise mean.

    ``[B, in_channels, h, w] -> [B, num_classes, h, w]``. With
    ``maps_per_class = M > 1`` this is WILDCAT's multi-map transfer layer
    plus class-wise pooling; with ``M = 1`` WELDON's transfer layer.
    """

    def __init__(self, in_channels: int, num_classes: int, maps_per_class: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv = nn.Conv2d(in_channels, num_classes * maps_per_class, kernel_size=1)
        self.class_pool = ClassWisePool2d(maps_per_class)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.class_pool(self.conv(self.dropout(features)))
