"""DeepLab heads: LargeFOV (v1), ASPP with summed branches (v2), ASPP with batch norm (v3), the v3+ decoder.

Atrous layers keep their rate at the training output stride in ``rate``;
:func:`scale_rates` multiplies every rate when the backbone switches to
another output stride (DeepLab v3 doubles the ASPP rates at output stride 8).
:class:`AtrousConv2d` and the LargeFOV head live in :mod:`segbench.nn.vgg` (shared
with other plugins) and are re-exported here.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.vgg import AtrousConv2d, LargeFOVHead  # shared with other plugins; re-exported here
from segbench.nn.vgg import gaussian_init as _gaussian


def scale_rates(module: nn.Module, factor: float) -> None:
    """Set every :class:`AtrousConv2d` in ``module`` to ``rate * factor``."""
    for layer in module.modules():
        if isinstance(layer, AtrousConv2d):
            layer.set_scale(factor)


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 1, rate: int = 1,
                 separable: bool = False) -> nn.Sequential:
    """Conv (atrous when ``rate > 1``) + BN + ReLU, or the atrous separable version of DeepLab v3+.

    Separable: depthwise ``k x k`` atrous conv + BN + ReLU, then pointwise
    1x1 conv + BN + ReLU (TensorFlow DeepLab's ``split_separable_conv2d``).
    """
    if separable and kernel_size > 1:
        return nn.Sequential(
            AtrousConv2d(in_channels, in_channels, kernel_size, rate, groups=in_channels, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
    conv = (AtrousConv2d(in_channels, out_channels, kernel_size, rate, bias=False) if kernel_size > 1
            else nn.Conv2d(in_channels, out_channels, 1, bias=False))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))


class ASPPSum(nn.Module):
    """DeepLab v2 ASPP: parallel atrous branches straight to class scores, summed.

    ``channels == 0``: each branch is one 3x3 atrous convolution to the
    classes (the ResNet-101 model). ``channels > 0``: each branch is
    fc6 (3x3 atrous, ``channels``) -> fc7 (1x1) -> fc8 (1x1 to classes), with
    ReLU and dropout (ASPP-L on VGG16). Score layers start N(0, 0.01).
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int], channels: int = 0,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches = []
        for rate in self.rates:
            if channels == 0:
                branches.append(_gaussian(AtrousConv2d(in_channels, num_classes, 3, rate)))
            else:
                branches.append(nn.Sequential(
                    AtrousConv2d(in_channels, channels, 3, rate), nn.ReLU(inplace=True), nn.Dropout(dropout),
                    nn.Conv2d(channels, channels, 1), nn.ReLU(inplace=True), nn.Dropout(dropout),
                    _gaussian(nn.Conv2d(channels, num_classes, 1)),
                ))
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average pooling -> 1x1 conv + BN + ReLU -> broadcast to the map size."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv = conv_bn_relu(in_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(F.adaptive_avg_pool2d(x, 1))
        return y.expand(-1, -1, *x.shape[-2:])  # bilinear upsampling of a 1x1 map is this broadcast


class ASPP(nn.Module):
    """DeepLab v3 ASPP: 1x1 branch, 3x3 atrous branches, image pooling; concat -> 1x1 conv + BN + ReLU -> dropout.

    Every branch has ``channels`` outputs with batch norm; ``separable``
    makes the atrous branches depthwise separable (DeepLab v3+).
    """

    def __init__(self, in_channels: int, rates: Sequence[int], channels: int = 256, image_pooling: bool = True,
                 separable: bool = False, dropout: float = 0.1) -> None:
        super().__init__()
        self.rates = tuple(rates)
        branches = [conv_bn_relu(in_channels, channels, 1)]
        branches += [conv_bn_relu(in_channels, channels, 3, rate, separable) for rate in self.rates]
        if image_pooling:
            branches.append(ImagePooling(in_channels, channels))
        self.branches = nn.ModuleList(branches)
        self.project = conv_bn_relu(channels * len(branches), channels, 1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.project(torch.cat([branch(x) for branch in self.branches], dim=1)))


class Decoder(nn.Module):
    """DeepLab v3+ decoder: low-level features -> 1x1 (48) + BN + ReLU; concat with the upsampled encoder
    output; two 3x3 convs (+ BN + ReLU); 1x1 to class scores at the low-level stride."""

    def __init__(self, low_channels: int, encoder_channels: int, num_classes: int, low_level_channels: int = 48,
                 channels: int = 256, separable: bool = False) -> None:
        super().__init__()
        self.reduce = conv_bn_relu(low_channels, low_level_channels, 1)
        self.fuse = nn.Sequential(
            conv_bn_relu(encoder_channels + low_level_channels, channels, 3, 1, separable),
            conv_bn_relu(channels, channels, 3, 1, separable),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, encoded: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        low = self.reduce(low)
        encoded = F.interpolate(encoded, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([encoded, low], dim=1)))
