"""WELDON: a timm backbone, a 1x1 class-map head and max+min region pooling, trained on image labels."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import ConfigError, DataError
from segbench.nn.backbones import feature_backbone
from segbench.nn.heads import ClassMapHead
from segbench.nn.losses import label_weights, multilabel_bce
from segbench.nn.pooling import WeldonPool2d

LOSSES = ("bce", "margin")


class Weldon(nn.Module):
    """WELDON (Durand, Thome, Cord, CVPR 2016) on a timm feature extractor.

    ``backbone`` (timm features_only, cut at feature level ``out_index``;
    ``backbone_args`` go to ``timm.create_model``, e.g. ``channels``)
    -> ``head`` (1x1 conv to ``num_classes * maps_per_class`` maps, class-wise
    mean) -> class maps ``[B, C, h, w]`` -> ``pool`` (WELDON max+min pooling)
    -> scores ``[B, C]``, divided by 2 when ``halve`` is set and the min term is
    on. Every class, background included, is trained as an independent binary
    problem on the image-level labels.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        backbone: str = "test_resnet",
        out_index: int = 2,
        output_stride: int | None = None,
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
        backbone_args: Mapping[str, Any] | None = None,
        maps_per_class: int = 1,
        kmax: float = 3,
        kmin: float | None = 3,
        alpha: float = 1.0,
        loss: str = "bce",
        dropout: float = 0.0,
        halve: bool = False,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise ConfigError(f"weldon: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if isinstance(maps_per_class, bool) or not isinstance(maps_per_class, int) or maps_per_class < 1:
            raise ConfigError(f"weldon: maps_per_class must be an integer >= 1, got {maps_per_class!r}")
        if not isinstance(halve, bool):
            raise ConfigError(f"weldon: halve must be true or false, got {halve!r}")
        try:
            self.pool = WeldonPool2d(kmax, kmin, alpha)
        except ValueError as exc:
            raise ConfigError(f"weldon: {exc}") from exc
        # halve: the authors' PyTorch pooling divides (max + min) by 2 when the min term is on (weldon.resnet.pytorch
        # weldon/weldon.py:49); their Torch pooling, which their ResNet-101 recipe ran with, does not
        # (spatial-pooling.torch WeldonPooling.lua:66)
        self.halve = halve and self.pool.kmin != 0 and self.pool.alpha != 0
        self.num_classes = num_classes
        self.loss_name = loss
        self.backbone, channels = feature_backbone(
            "weldon", backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        self.head = ClassMapHead(channels, num_classes, maps_per_class, dropout=dropout)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> class maps ``[B, C, h, w]`` at the feature resolution."""
        return self.head(self.backbone(images)[-1])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled scores ``[B, C]`` and class maps ``[B, C, h, w]``."""
        maps = self.class_maps(images)
        scores = self.pool(maps)
        return (scores / 2 if self.halve else scores), maps

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Multi-label loss on the pooled scores: BCE with logits, or the binary hinge (``loss="margin"``).

        A class marked in a target's optional ``labels_ignore`` does not count.
        """
        scores, _ = self(images)
        scores = scores.float()
        if self.loss_name == "bce":
            return {"loss": multilabel_bce("weldon", scores, targets)}
        labels, weight = label_weights("weldon", targets, self.num_classes, scores.device)
        if labels.shape != scores.shape:
            raise DataError(f"weldon: labels have shape {tuple(labels.shape)}, scores {tuple(scores.shape)}")
        per_class = F.relu(1.0 - (2.0 * labels - 1.0) * scores)
        return {"loss": (per_class * weight).sum() / weight.sum().clamp_min(1.0)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (pooled) and ``score_maps`` ``[C, h, w]`` (class maps before pooling)."""
        scores, maps = self(images)
        scores, maps = scores.float(), maps.float()
        return [{"scores": s, "score_maps": m} for s, m in zip(scores, maps)]


def build_weldon(num_classes: int, **options) -> Weldon:
    """``MethodSpec.build``: a :class:`Weldon` for ``num_classes`` classes."""
    return Weldon(num_classes, **options)
