"""VGG pieces shared by the plugins that build on ImageNet VGG16: atrous VGG, the DeepLab-LargeFOV head, and
ImageNet fc6 / fc7 as convolutions (copied whole, as FCN does, or decimated, as DeepLab v1 does).

* :func:`atrous_vgg` turns a timm VGG (``features_only``) into DeepLab-LargeFOV's network in place: the pools
  past the output stride keep the size (3x3, stride 1, pad 1) and the 3x3 convolutions after each of them are
  dilated by a further factor 2 (output stride 8: pool4 / pool5 stride 1, conv5 dilation 2).
* :class:`LargeFOVHead`: DeepLab-LargeFOV's classifier, ``[pool5a] -> fc6 (3x3, rate 12) -> fc7 (1x1) -> fc8``.
* :class:`VGGFC`: VGG's fc6 (7x7) and fc7 (1x1) as convolutions, the "fully connected layers as convolutions" of
  the fully convolutional nets (FCN, Deep MIL).
* :func:`vgg_classifier` reads ImageNet VGG's fc6 / fc7 (timm keeps them as convolutions in ``pre_logits``:
  ``fc1`` 7x7x4096, ``fc2`` 1x1x4096); :func:`copy_classifier` copies them into layers of the same shape,
  :func:`decimate_classifier` into narrower, smaller ones (every ``N / out``-th filter, the kernel subsampled);
  :func:`load_vgg_classifier` and :func:`load_largefov_classifier` do both steps.

Nothing here imports timm until a classifier is read, and nothing downloads without
:func:`segbench.nn.backbones.cached_or_online`'s offline check.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "VGG_FC_CHANNELS",
    "VGG_FC_KERNEL",
    "is_vgg",
    "atrous_vgg",
    "AtrousConv2d",
    "LargeFOVHead",
    "VGGFC",
    "gaussian_init",
    "vgg_classifier",
    "copy_classifier",
    "decimate_classifier",
    "load_vgg_classifier",
    "load_largefov_classifier",
]

VGG_FC_CHANNELS = 4096  # width of ImageNet VGG's fc6 / fc7
VGG_FC_KERNEL = 7  # fc6 as a convolution: 7x7 on pool5 (224 px -> 7x7 -> 1x1)


def is_vgg(name: str) -> bool:
    """True for timm's VGG family (``vgg11`` ... ``vgg19_bn``, with or without a ``.tag``)."""
    return name.split(".")[0].startswith("vgg")


def atrous_vgg(model: nn.Module, output_stride: int) -> None:
    """Make a timm VGG (``features_only``, flattened) give ``output_stride``, in place; weights untouched.

    Walking the layers in order: a 2x2 stride-2 max-pool is kept while the
    stride stays within ``output_stride``; past it, the pool becomes 3x3,
    stride 1, pad 1 (DeepLab-LargeFOV's pool4/pool5) and the 3x3 convolutions
    after it are dilated by a further factor 2. Calling it again with another
    stride re-derives every layer, so it also switches strides. A VGG cut
    before pool5 (``out_indices``) is converted as far as it goes.
    """
    stride, dilation = 1, 1
    for name, layer in list(model.named_children()):
        if isinstance(layer, nn.MaxPool2d):
            if stride * 2 <= output_stride:
                stride *= 2
                setattr(model, name, nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                dilation *= 2
                setattr(model, name, nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
        elif isinstance(layer, nn.Conv2d) and layer.kernel_size[0] > 1:
            layer.dilation = (dilation, dilation)
            layer.padding = (dilation * (layer.kernel_size[0] // 2), dilation * (layer.kernel_size[1] // 2))


class AtrousConv2d(nn.Conv2d):
    """A ``k x k`` convolution with dilation ``rate`` and the padding that keeps the size.

    ``rate`` is kept: :meth:`set_scale` re-dilates it by a factor (DeepLab's
    heads when the backbone switches output stride).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, rate: int, **kwargs: Any) -> None:
        pad = rate * (kernel_size // 2)
        super().__init__(in_channels, out_channels, kernel_size, padding=pad, dilation=rate, **kwargs)
        self.rate = rate

    def set_scale(self, factor: float) -> None:
        """Dilate by ``rate * factor`` (rounded, at least 1)."""
        rate = max(1, int(round(self.rate * factor)))
        self.dilation = (rate, rate)
        self.padding = (rate * (self.kernel_size[0] // 2), rate * (self.kernel_size[1] // 2))


def gaussian_init(conv: nn.Conv2d, std: float = 0.01) -> nn.Conv2d:
    """The Caffe models' classifier init: weights N(0, std), zero bias; returns ``conv``."""
    nn.init.normal_(conv.weight, std=std)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class LargeFOVHead(nn.Module):
    """DeepLab-LargeFOV's classifier: [pool5a] -> fc6 (3x3, rate 12) -> fc7 (1x1) -> fc8 (1x1 to classes).

    ``[B, in_channels, h, w] -> [B, num_classes, h, w]`` (the size is kept).
    ReLU and dropout follow fc6 and fc7. ``pool5a`` is the reference
    model's 3x3 stride-1 average pooling after pool5. fc6 / fc7 start with
    PyTorch's default init (:func:`load_largefov_classifier` fills them from
    ImageNet VGG), fc8 N(0, 0.01).
    """

    def __init__(self, in_channels: int, num_classes: int, channels: int = 1024, kernel_size: int = 3,
                 rate: int = 12, dropout: float = 0.5, pool5a: bool = True) -> None:
        super().__init__()
        self.pool5a = nn.AvgPool2d(3, stride=1, padding=1) if pool5a else nn.Identity()
        self.fc6 = AtrousConv2d(in_channels, channels, kernel_size, rate)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.drop7 = nn.Dropout(dropout)
        self.fc8 = gaussian_init(nn.Conv2d(channels, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(F.relu(self.fc6(self.pool5a(x)), inplace=True))
        x = self.drop7(F.relu(self.fc7(x), inplace=True))
        return self.fc8(x)


class VGGFC(nn.Module):
    """VGG's fc6 / fc7 as convolutions: fc6 (``kernel_size``, zero-padded to keep the size) -> ReLU -> dropout ->
    fc7 (1x1) -> ReLU -> dropout. ``[B, in_channels, h, w] -> [B, channels, h, w]``.

    The defaults are ImageNet VGG's (7x7 and 4,096 wide on pool5's 512
    channels), so :func:`load_vgg_classifier` can copy its classifier in.
    """

    def __init__(self, in_channels: int = 512, channels: int = VGG_FC_CHANNELS, kernel_size: int = VGG_FC_KERNEL,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.out_channels = channels
        self.fc6 = nn.Conv2d(in_channels, channels, kernel_size, padding=kernel_size // 2)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(channels, channels, 1)
        self.drop7 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop6(F.relu(self.fc6(x), inplace=True))
        return self.drop7(F.relu(self.fc7(x), inplace=True))


def vgg_classifier(name: str, weights: str | os.PathLike | None = None) -> tuple[nn.Conv2d, nn.Conv2d] | None:
    """ImageNet VGG's ``(fc6, fc7)`` as convolutions: timm's ``pre_logits.fc1`` / ``fc2`` of model ``name``.

    ``weights`` (a local file of the same timm model) is read instead of
    timm's download; without it a cached file is used when offline
    (:func:`segbench.nn.backbones.cached_or_online`, which fails at once when
    neither the hub nor a cache is there). None when the model has no such
    layers.
    """
    import timm

    from segbench.nn.backbones import cached_or_online

    options: dict[str, Any] = {}
    source = str(weights) if weights else cached_or_online(name)
    if source:
        options["pretrained_cfg_overlay"] = dict(file=source)
    classifier = timm.create_model(name, pretrained=True, **options)
    pre_logits = getattr(classifier, "pre_logits", None)
    fc1, fc2 = getattr(pre_logits, "fc1", None), getattr(pre_logits, "fc2", None)
    if not isinstance(fc1, nn.Conv2d) or not isinstance(fc2, nn.Conv2d):
        return None
    return fc1, fc2


def copy_classifier(fc6: nn.Conv2d, fc7: nn.Conv2d, source6: nn.Conv2d, source7: nn.Conv2d) -> bool:
    """Copy ``source6`` / ``source7`` into ``fc6`` / ``fc7`` when the weight shapes match; False (nothing
    copied) otherwise."""
    if source6.weight.shape != fc6.weight.shape or source7.weight.shape != fc7.weight.shape:
        return False
    with torch.no_grad():
        fc6.weight.copy_(source6.weight)
        fc6.bias.copy_(source6.bias)
        fc7.weight.copy_(source7.weight)
        fc7.bias.copy_(source7.bias)
    return True


def decimate_classifier(fc6: nn.Conv2d, fc7: nn.Conv2d, source6: nn.Conv2d, source7: nn.Conv2d) -> bool:
    """Fill the narrower ``fc6`` / ``fc7`` from ``source6`` / ``source7`` by decimation, as DeepLab v1 turns
    VGG16's fc6 / fc7 (4,096 wide, 7x7) into LargeFOV's (1,024 wide, 3x3).

    With ``N`` source filters and ``out`` target filters, every
    ``N / out``-th filter is kept (filters 0, s, 2s, ... with ``s = N / out``),
    for fc6's outputs and for fc7's outputs and inputs; fc6's ``K x K``
    kernel is subsampled to ``k`` taps per axis, evenly spaced and rounded
    (7 -> 3: taps 0, 3, 6). False (nothing copied) when ``out`` does not
    divide ``N``, ``k > K`` or the input channels differ.
    """
    out, k = fc6.out_channels, fc6.kernel_size[0]
    n, big = source6.out_channels, source6.kernel_size[0]
    if n % out or k > big or fc7.weight.shape[:2] != (out, out):
        return False
    if source6.weight.shape[:2] != (n, fc6.in_channels) or source7.weight.shape[:2] != (n, n):
        return False
    keep = torch.arange(0, n, n // out)
    taps = torch.linspace(0, big - 1, k).round().long()
    with torch.no_grad():
        fc6.weight.copy_(source6.weight[keep][:, :, taps][:, :, :, taps])
        fc6.bias.copy_(source6.bias[keep])
        fc7.weight.copy_(source7.weight[keep][:, keep])
        fc7.bias.copy_(source7.bias[keep])
    return True


def load_vgg_classifier(fc6: nn.Conv2d, fc7: nn.Conv2d, name: str, weights: str | os.PathLike | None = None) -> bool:
    """ImageNet fc6 / fc7 of timm model ``name`` copied whole into ``fc6`` / ``fc7`` (FCN, Deep MIL); True when
    copied, False when the shapes differ (the layers keep their initialisation)."""
    source = vgg_classifier(name, weights)
    return source is not None and copy_classifier(fc6, fc7, *source)


def load_largefov_classifier(fc6: nn.Conv2d, fc7: nn.Conv2d, name: str,
                             weights: str | os.PathLike | None = None) -> bool:
    """ImageNet fc6 / fc7 of timm model ``name`` decimated into ``fc6`` / ``fc7`` (DeepLab v1,
    :func:`decimate_classifier`); True when filled, False when the shapes do not allow it (the layers keep
    their initialisation; ImageNet VGG is not read when ``fc6`` cannot fit its 4,096 x 7 x 7)."""
    if VGG_FC_CHANNELS % fc6.out_channels or fc6.kernel_size[0] > VGG_FC_KERNEL:
        return False
    source = vgg_classifier(name, weights)
    if source is None or source[0].out_channels != VGG_FC_CHANNELS:
        return False
    return decimate_classifier(fc6, fc7, *source)
