"""FCN-32s, FCN-16s and FCN-8s (Long, Shelhamer and Darrell) on a timm backbone.

Layer names follow the reference Caffe models: ``fc6``/``fc7`` (the
classifier's fully connected layers as convolutions), ``score_fr``,
``score_pool4``, ``score_pool3``, ``upscore2``, ``upscore_pool4``. See the
plugin README for what follows the papers and what differs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from segbench.engine.tta import class_argmax
from segbench.errors import ConfigError
from segbench.nn.backbones import create_backbone
from segbench.nn.upsample import BilinearUpsample
from segbench.nn.vgg import load_vgg_classifier

VARIANTS = {"32s": 0, "16s": 1, "8s": 2}  # number of skip fusions
TAPS = ("auto", "pool", "stage")
LOSS_REDUCTIONS = ("mean", "sum")
IGNORE_INDEX = 255


class FCN(nn.Module):
    """A fully convolutional network with 0 (32s), 1 (16s) or 2 (8s) skip fusions.

    ``forward(images)`` returns logits ``[B, C, H, W]`` at the input size.
    """

    def __init__(
        self,
        num_classes: int,
        variant: str = "8s",
        backbone: str = "vgg16",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        fc_channels: int = 4096,
        fc_kernel: int = 7,
        dropout: float = 0.5,
        taps: str = "auto",
        learn_upsampling: bool = True,
        pool4_scale: float = 1.0,
        pool3_scale: float = 1.0,
        loss_reduction: str = "mean",
        lr_mults: str = "head",
    ) -> None:
        super().__init__()
        _check_options(num_classes, variant, fc_channels, fc_kernel, dropout, taps, loss_reduction)
        if lr_mults not in ("head", "caffe"):
            raise ConfigError(f"fcn: lr_mults must be head or caffe, got {lr_mults!r}")
        self.lr_mults = lr_mults
        self.num_classes = num_classes
        self.variant = variant
        self.loss_reduction = loss_reduction
        self.pool4_scale = float(pool4_scale)
        self.pool3_scale = float(pool3_scale)
        self.backbone = create_backbone(backbone, pretrained=pretrained, weights=weights)
        reductions = list(self.backbone.feature_info.reduction())
        channels = list(self.backbone.feature_info.channels())
        self.pool_taps = (taps == "pool") or (taps == "auto" and backbone.startswith("vgg"))
        # indices of the feature maps used as pool5 / pool4 / pool3 (strides 32, 16, 8)
        self.tap_index, tap_channels = {}, {}
        for stride in (32, 16, 8)[: 1 + VARIANTS[variant]]:
            want = stride // 2 if (self.pool_taps and stride != 32) else stride
            if want not in reductions:
                raise ConfigError(
                    f"backbone '{backbone}' has no feature map at stride {want} "
                    f"(its strides: {reductions}); FCN-{variant} needs strides 8, 16 and 32"
                )
            index = len(reductions) - 1 - reductions[::-1].index(want)  # the deepest map at that stride
            self.tap_index[stride], tap_channels[stride] = index, channels[index]

        pad = fc_kernel // 2
        self.fc6 = nn.Conv2d(tap_channels[32], fc_channels, fc_kernel, padding=pad)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Conv2d(fc_channels, fc_channels, 1)
        self.drop7 = nn.Dropout(dropout)
        self.score_fr = nn.Conv2d(fc_channels, num_classes, 1)
        _zero(self.score_fr)
        if VARIANTS[variant] >= 1:
            self.upscore2 = BilinearUpsample(num_classes, 2, learnable=learn_upsampling)
            self.score_pool4 = nn.Conv2d(tap_channels[16], num_classes, 1)
            _zero(self.score_pool4)
        if VARIANTS[variant] >= 2:
            self.upscore_pool4 = BilinearUpsample(num_classes, 2, learnable=learn_upsampling)
            self.score_pool3 = nn.Conv2d(tap_channels[8], num_classes, 1)
            _zero(self.score_pool3)
        self.fc_pretrained = False  # True once fc6/fc7 hold the ImageNet classifier's weights
        if (pretrained or weights) and backbone.startswith("vgg"):
            self._load_vgg_classifier(backbone, pretrained, weights, fc_channels, fc_kernel)

    # -- network ---------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``[B, C, H, W]`` for a normalised batch ``[B, 3, H, W]``."""
        features = self.backbone(images)
        pool5 = self._tap(features, 32)
        h = self.drop6(F.relu(self.fc6(pool5), inplace=True))
        h = self.drop7(F.relu(self.fc7(h), inplace=True))
        score = self.score_fr(h)
        if VARIANTS[self.variant] >= 1:
            pool4 = self._tap(features, 16) * self.pool4_scale
            score = _align(self.upscore2(score), pool4) + self.score_pool4(pool4)
        if VARIANTS[self.variant] >= 2:
            pool3 = self._tap(features, 8) * self.pool3_scale
            score = _align(self.upscore_pool4(score), pool3) + self.score_pool3(pool3)
        # final upsampling: fixed bilinear, as the reference upscore8/16/32 layers (lr_mult 0)
        return F.interpolate(score, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _tap(self, features: list[torch.Tensor], stride: int) -> torch.Tensor:
        x = features[self.tap_index[stride]]
        if self.pool_taps and stride != 32:  # VGG: pool3 / pool4 are max-pools of conv3_3 / conv4_3
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        return x

    # -- segbench method API -------------------------------------------------------
    def param_multipliers(self, head_lr_mult: float) -> dict[str, tuple[float, float]] | None:
        """``lr_mults="caffe"``: biases at x2 lr without weight decay, as every layer of the reference nets
        (voc-fcn*/net.py:8); ``"head"``: None, the engine's backbone / head rule."""
        return _caffe_table(self) if self.lr_mults == "caffe" else None

    def loss(self, images: torch.Tensor, targets: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Per-pixel softmax cross-entropy, pixels labelled 255 ignored.

        ``loss_reduction="mean"`` divides by the number of labelled pixels in the
        batch (0 when every pixel is 255); ``"sum"`` is the papers' unnormalised loss.
        """
        logits = self(images)
        masks = torch.stack([t["mask"] for t in targets]).to(device=logits.device, dtype=torch.long)
        if masks.shape[-2:] != logits.shape[-2:]:
            raise ValueError(f"target masks are {tuple(masks.shape[-2:])}, images {tuple(logits.shape[-2:])}")
        total = F.cross_entropy(logits.float(), masks, ignore_index=IGNORE_INDEX, reduction="sum")
        if self.loss_reduction == "mean":
            total = total / (masks != IGNORE_INDEX).sum().clamp(min=1)
        return {"loss": total}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per image: ``mask`` (argmax), ``score_maps`` (softmax) and ``scores`` (per-class max of the maps)."""
        probs = self(images).float().softmax(dim=1)
        masks = class_argmax(probs)  # argmax's values, faster on the CPU
        scores = probs.flatten(2).amax(dim=2)
        return [{"mask": m, "score_maps": p, "scores": s} for m, p, s in zip(masks, probs, scores)]

    # -- pretrained classifier -------------------------------------------------------
    def _load_vgg_classifier(self, name: str, pretrained: bool, weights, fc_channels: int, fc_kernel: int) -> None:
        """Copy the ImageNet fc6/fc7 (timm's ``pre_logits`` ConvMlp) into ``fc6``/``fc7`` when the shapes match
        (:func:`segbench.nn.vgg.load_vgg_classifier`); otherwise fc6 / fc7 stay randomly initialised."""
        if load_vgg_classifier(self.fc6, self.fc7, name, weights):
            self.fc_pretrained = True


def _align(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Resize ``x`` (bilinear) to ``like``'s spatial size when they differ (odd input sizes)."""
    if x.shape[-2:] == like.shape[-2:]:
        return x
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _zero(conv: nn.Conv2d) -> None:
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)


def _caffe_table(model: nn.Module) -> dict[str, tuple[float, float]]:
    """The reference nets' ``param=[dict(lr_mult=1, decay_mult=1), dict(lr_mult=2, decay_mult=0)]`` on every layer."""
    from segbench.nn.multipliers import caffe_multipliers

    return caffe_multipliers(model, ())


def _check_options(num_classes, variant, fc_channels, fc_kernel, dropout, taps, loss_reduction) -> None:
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"fcn: num_classes must be an integer >= 2, got {num_classes!r}")
    if variant not in VARIANTS:
        raise ConfigError(f"fcn: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    if not isinstance(fc_channels, int) or fc_channels < 1:
        raise ConfigError(f"fcn: fc_channels must be a positive integer, got {fc_channels!r}")
    if not isinstance(fc_kernel, int) or fc_kernel < 1 or fc_kernel % 2 == 0:
        raise ConfigError(f"fcn: fc_kernel must be a positive odd integer, got {fc_kernel!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"fcn: dropout must be in [0, 1), got {dropout!r}")
    if taps not in TAPS:
        raise ConfigError(f"fcn: taps must be one of {', '.join(TAPS)}, got {taps!r}")
    if loss_reduction not in LOSS_REDUCTIONS:
        raise ConfigError(f"fcn: loss_reduction must be one of {', '.join(LOSS_REDUCTIONS)}, got {loss_reduction!r}")

