"""DeconvNet (Noh, Hong, Han, ICCV 2015): a VGG convolution network and its mirror, a deconvolution network
that unpools with the pooling switches.

The convolution network reuses timm's VGG (``timm.models.vgg.VGG``: its
conv / batch-norm / ReLU layers, and its ImageNet weights for ``vgg*_bn``);
only its ``MaxPool2d`` layers are replaced by index-returning ones. Layer names
follow the reference Caffe model: ``fc6``, ``fc7``, ``fc6_deconv``,
``unpool{1..5}``, ``deconv{1..5}``, ``score``. See the plugin README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError

BACKBONES = ("vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn")
IGNORE_INDEX = 255


def conv_bn_relu(conv: nn.Module, channels: int) -> nn.Sequential:
    """``conv`` followed by batch norm and ReLU: every (de)convolution of DeconvNet."""
    return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class DeconvNet(nn.Module):
    """DeconvNet on a timm VGG with batch norm; ``forward(images)`` returns logits ``[B, C, H, W]``."""

    def __init__(
        self,
        num_classes: int,
        backbone: str = "vgg16_bn",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        width: float = 1.0,
        depth: int = 5,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        final_relu: bool = True,
    ) -> None:
        super().__init__()
        _check_options(num_classes, backbone, pretrained, weights, width, depth, fc_channels, fc_kernel)
        self.num_classes = num_classes
        self.fc_kernel = fc_kernel
        vgg = _timm_vgg(backbone, pretrained or bool(weights), weights, width, depth)

        # the convolution network: timm's layers cut at each max-pool, pools replaced by index-returning ones
        stages, pools, current = [], [], []
        for layer in vgg.features:
            if isinstance(layer, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                pools.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation,
                                          return_indices=True, ceil_mode=layer.ceil_mode))
                current = []
            else:
                current.append(layer)
        self.stages = nn.ModuleList(stages[:depth])
        self.pools = nn.ModuleList(pools[:depth])
        convs = [[m for m in stage if isinstance(m, nn.Conv2d)] for stage in self.stages]
        top = convs[-1][-1].out_channels

        # fc6 / fc7 as convolutions (fc6: fc_kernel x fc_kernel, unpadded, as the 7x7 on pool5), and fc6-deconv
        self.fc6 = conv_bn_relu(nn.Conv2d(top, fc_channels, fc_kernel), fc_channels)
        self.fc7 = conv_bn_relu(nn.Conv2d(fc_channels, fc_channels, 1), fc_channels)
        self.fc6_deconv = conv_bn_relu(nn.ConvTranspose2d(fc_channels, top, fc_kernel), top)

        # the deconvolution network: stage s mirrors stage s of the convolution network, layer by layer
        self.unpools = nn.ModuleList(nn.MaxUnpool2d(p.kernel_size, p.stride, p.padding) for p in self.pools)
        self.deconvs = nn.ModuleList()
        for s, stage_convs in enumerate(convs):
            layers = []
            for i, conv in enumerate(reversed(stage_convs)):
                out = conv.in_channels if not (s == 0 and i == len(stage_convs) - 1) else conv.out_channels
                deconv = nn.ConvTranspose2d(conv.out_channels, out, conv.kernel_size, padding=conv.padding)
                layers.append(conv_bn_relu(deconv, out))
            self.deconvs.append(nn.Sequential(*layers))
        if not final_relu:  # the score layer sees deconv1_2's batch-normalised output (see the README)
            self.deconvs[0][-1][2] = nn.Identity()
        self.score = nn.Conv2d(convs[0][-1].out_channels, num_classes, 1)
        self._init_decoder()
        self.fc_pretrained = self._copy_classifier(vgg) if (pretrained or weights) and depth == 5 else False

    def _init_decoder(self) -> None:
        """The reference initialisation: Gaussian std 0.01, zero bias (the convolution network keeps timm's)."""
        for module in (self.fc6, self.fc7, self.fc6_deconv, self.deconvs, self.score):
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.normal_(m.weight, std=0.01)
                    nn.init.zeros_(m.bias)

    def _copy_classifier(self, vgg: nn.Module) -> bool:
        """Copy ImageNet fc6 / fc7 (timm's ``pre_logits`` convolutions) when their shapes match."""
        fc1, fc2 = getattr(vgg.pre_logits, "fc1", None), getattr(vgg.pre_logits, "fc2", None)
        conv6, conv7 = self.fc6[0], self.fc7[0]
        if fc1 is None or fc1.weight.shape != conv6.weight.shape or fc2.weight.shape != conv7.weight.shape:
            return False
        with torch.no_grad():
            for ours, theirs in ((conv6, fc1), (conv7, fc2)):
                ours.weight.copy_(theirs.weight)
                ours.bias.copy_(theirs.bias)
        return True

    # -- network -----------------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``[B, C, H, W]`` for a normalised batch ``[B, 3, H, W]`` of any size."""
        x, switches = images, []
        for stage, pool in zip(self.stages, self.pools):
            x = stage(x)
            size = x.shape[-2:]
            x, indices = pool(x)
            switches.append((indices, size))
        # fc6 is unpadded (7x7 -> 1x1 on the paper's 224 px crops); a smaller map is zero-padded to the kernel
        h, w = x.shape[-2:]
        pad_h, pad_w = max(0, self.fc_kernel - h), max(0, self.fc_kernel - w)
        padding = (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2)
        y = self.fc6_deconv(self.fc7(self.fc6(F.pad(x, padding) if pad_h or pad_w else x)))
        x = y[..., padding[2]:padding[2] + h, padding[0]:padding[0] + w]
        for s in reversed(range(len(self.stages))):
            indices, size = switches[s]
            x = self.unpools[s](x, indices, size)
            x = self.deconvs[s](x)
        return self.score(x)

    # -- segbench method API -------------------------------------------------------------
    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per-pixel softmax cross-entropy, mean over labelled pixels (255 ignored; 0 when none is labelled)."""
        logits = self(images)
        masks = torch.stack([t["mask"] for t in targets]).to(device=logits.device, dtype=torch.long)
        if masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"target masks are {tuple(masks.shape[-2:])}, images {tuple(logits.shape[-2:])}")
        total = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
        return {"loss": total / (masks != IGNORE_INDEX).sum().clamp(min=1)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: ``mask`` (argmax), ``score_maps`` (softmax) and ``scores`` (per-class max of the maps)."""
        probs = self(images).float().softmax(dim=1)
        masks = probs.argmax(dim=1)
        scores = probs.flatten(2).amax(dim=2)
        return [{"mask": m, "score_maps": p, "scores": s} for m, p, s in zip(masks, probs, scores)]


def vgg_config(backbone: str, width: float, depth: int) -> list:
    """timm's VGG configuration of ``backbone`` with channels scaled by ``width``, cut after ``depth`` pools."""
    from timm.models.vgg import cfgs

    config, pools = [], 0
    for v in cfgs[backbone.split("_")[0]]:
        if pools == depth:
            break
        config.append(v if v == "M" else max(1, round(v * width)))
        pools += v == "M"
    return config


def _timm_vgg(backbone: str, pretrained: bool, weights, width: float, depth: int) -> nn.Module:
    """A timm VGG with batch norm: the registered model (ImageNet weights) or a scaled configuration."""
    import timm
    from timm.models.vgg import VGG

    if pretrained:
        from segbench.nn.backbones import cached_or_online

        options: dict[str, Any] = {}
        if weights:
            path = Path(weights).expanduser()
            if not path.is_file():
                raise ConfigError(f"{path}: weights file not found")
            options["pretrained_cfg_overlay"] = dict(file=str(path))
        else:
            cached = cached_or_online(backbone)
            if cached:
                options["pretrained_cfg_overlay"] = dict(file=cached)
        return timm.create_model(backbone, pretrained=True, **options)
    # from scratch: timm's VGG class on the (scaled) configuration; a 1-wide pre-logits MLP that is never used
    return VGG(vgg_config(backbone, width, depth), num_classes=0, norm_layer=nn.BatchNorm2d, mlp_ratio=1 / 4096)


def _check_options(num_classes, backbone, pretrained, weights, width, depth, fc_channels, fc_kernel) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"deconvnet: num_classes must be an integer >= 2, got {num_classes!r}")
    if backbone not in BACKBONES:
        raise ConfigError(f"deconvnet: backbone must be one of {', '.join(BACKBONES)} (timm VGG with batch norm), "
                          f"got {backbone!r}")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not 0 < width <= 1:
        raise ConfigError(f"deconvnet: width must be in (0, 1] (channel multiplier of VGG), got {width!r}")
    if not isinstance(depth, int) or isinstance(depth, bool) or not 1 <= depth <= 5:
        raise ConfigError(f"deconvnet: depth must be an integer in 1..5 (VGG blocks kept), got {depth!r}")
    if (pretrained or weights) and width != 1:
        raise ConfigError(f"deconvnet: pretrained weights need width=1.0, got width={width!r}")
    if not isinstance(fc_channels, int) or isinstance(fc_channels, bool) or fc_channels < 1:
        raise ConfigError(f"deconvnet: fc_channels must be a positive integer, got {fc_channels!r}")
    if not isinstance(fc_kernel, int) or isinstance(fc_kernel, bool) or fc_kernel < 1:
        raise ConfigError(f"deconvnet: fc_kernel must be a positive integer, got {fc_kernel!r}")
