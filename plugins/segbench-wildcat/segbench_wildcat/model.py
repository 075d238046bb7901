"""WILDCAT: a timm backbone, a multi-map transfer layer, class-wise pooling and k+/k- max+min spatial pooling."""

from __future__ import annotations

import math
import os
from numbers import Real
from typing import Any, Mapping

import torch
from torch import nn

from segbench.errors import ConfigError
from segbench.nn.backbones import feature_backbone
from segbench.nn.heads import ClassMapHead
from segbench.nn.losses import multilabel_bce
from segbench.nn.pooling import WeldonPool2d

K_FORMS = "a fraction of the regions in (0, 1) or a whole count >= 1"


def check_options(num_classes: int, maps_per_class: Any, kmax: Any, kmin: Any, alpha: Any, dropout: Any,
                  backbone_args: Any, halve: Any = False) -> None:
    """Raise a one-line :class:`ConfigError` naming the first option out of its accepted range."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"wildcat: num_classes must be an integer >= 1, got {num_classes!r}")
    if isinstance(maps_per_class, bool) or not isinstance(maps_per_class, int) or maps_per_class < 1:
        raise ConfigError(f"wildcat: maps_per_class must be an integer >= 1, got {maps_per_class!r}")
    _check_k("kmax", kmax, allow_zero=False)
    if kmin is not None:
        _check_k("kmin", kmin, allow_zero=True)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha) or alpha < 0:
        raise ConfigError(f"wildcat: alpha must be a number >= 0, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, Real) or not 0 <= dropout < 1:
        raise ConfigError(f"wildcat: dropout must be in [0, 1), got {dropout!r}")
    if backbone_args is not None and not isinstance(backbone_args, Mapping):
        raise ConfigError(f"wildcat: backbone_args must be a dict of timm model arguments, got {backbone_args!r}")
    if not isinstance(halve, bool):
        raise ConfigError(f"wildcat: halve must be true or false, got {halve!r}")


def _check_k(name: str, k: Any, allow_zero: bool) -> None:
    forms = ("0 (off), " if allow_zero else "") + K_FORMS
    if isinstance(k, bool) or not isinstance(k, Real) or not math.isfinite(k):
        raise ConfigError(f"wildcat: {name} must be {forms}, got {k!r}")
    if (k == 0 and allow_zero) or 0 < k < 1 or (k >= 1 and float(k).is_integer()):
        return
    raise ConfigError(f"wildcat: {name} must be {forms}, got {k!r}")


class Wildcat(nn.Module):
    """WILDCAT (Durand, Mordan, Thome, Cord, CVPR 2017) on a timm feature extractor.

    ``backbone`` (timm features_only, cut at level ``out_index``) -> multi-map
    transfer layer (1x1 conv to ``num_classes * maps_per_class`` maps) ->
    class-wise pooling (mean of each class's M maps) = class maps
    ``[B, C, h, w]`` -> spatial pooling (mean of the ``kmax`` highest regions
    plus ``alpha`` x mean of the ``kmin`` lowest, divided by 2 when ``halve``
    is set and the min term is on, as the authors' ``WildcatPool2dFunction``)
    = scores ``[B, C]``. Trained with the multi-label soft-margin loss on image-level labels.
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
        maps_per_class: int = 4,
        kmax: float = 0.2,
        kmin: float | None = None,
        alpha: float = 0.7,
        dropout: float = 0.0,
        halve: bool = False,
    ) -> None:
        super().__init__()
        check_options(num_classes, maps_per_class, kmax, kmin, alpha, dropout, backbone_args, halve)
        self.num_classes = num_classes
        self.backbone, channels = feature_backbone(
            "wildcat", backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        self.head = ClassMapHead(channels, num_classes, maps_per_class, dropout=float(dropout))
        self.pool = WeldonPool2d(kmax, kmax if kmin is None else kmin, float(alpha))
        # halve: wildcat.pytorch divides (max + alpha x min) by 2 when the min term is on (wildcat/pooling.py:41-43)
        self.halve = halve and self.pool.kmin != 0 and self.pool.alpha != 0

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> class maps ``[B, C, h, w]`` (after class-wise pooling)."""
        return self.head(self.backbone(images)[-1])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled scores ``[B, C]`` and class maps ``[B, C, h, w]``."""
        maps = self.class_maps(images)
        scores = self.pool(maps)
        return (scores / 2 if self.halve else scores), maps

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Multi-label soft-margin loss (BCE with logits averaged over classes and images).

        A class marked in a target's optional ``labels_ignore`` does not count.
        """
        scores, _ = self(images)
        return {"loss": multilabel_bce("wildcat", scores, targets)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (pooled logits) and ``score_maps`` ``[C, h, w]`` (class maps)."""
        scores, maps = self(images)
        scores, maps = scores.float(), maps.float()
        return [{"scores": s, "score_maps": m} for s, m in zip(scores, maps)]
