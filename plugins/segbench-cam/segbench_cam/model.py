"""CAM: GAP, a linear classifier, and class activation maps from its weights (Zhou et al., CVPR 2016)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.backbones import feature_backbone
from segbench.nn.checks import check_int, check_number
from segbench.nn.losses import multilabel_bce

NAME = "cam"


class CAM(nn.Module):
    """Features ``f`` ``[B, K, h, w]`` -> GAP -> ``nn.Linear(K, C)`` = scores; CAMs from the same weights.

    ``CAM_c(x, y) = sum_k w_ck f_k(x, y) + b_c`` is the classifier applied at
    every position (a 1x1 convolution with the linear layer's weight and
    bias), so the spatial mean of ``CAM_c`` equals the score of class ``c``.
    ``extra_conv > 0`` adds the paper's 3x3 convolution (and ReLU) with that
    many channels between the backbone and the GAP. Trained with binary
    cross-entropy on the image-level labels.
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
        extra_conv: int = 0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        extra_conv = check_int(NAME, "extra_conv", extra_conv, 0)
        dropout = check_number(NAME, "dropout", dropout, 0.0, low_open=False, high=0.99)
        self.num_classes = num_classes
        self.backbone, channels = feature_backbone(
            NAME, backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        if extra_conv:
            self.extra = nn.Sequential(nn.Conv2d(channels, extra_conv, 3, padding=1), nn.ReLU(inplace=True))
            channels = extra_conv
        else:
            self.extra = nn.Identity()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> the last convolutional features ``[B, K, h, w]``."""
        return self.extra(self.backbone(images)[-1])

    def cams(self, features: torch.Tensor) -> torch.Tensor:
        """Class activation maps ``[B, C, h, w]``: the classifier's weights and bias applied at every position."""
        weight = self.fc.weight.to(features.dtype)[:, :, None, None]
        return F.conv2d(features, weight, self.fc.bias.to(features.dtype))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, C]`` (linear layer on the GAP features) and CAMs ``[B, C, h, w]``."""
        features = self.features(images)
        scores = self.fc(self.dropout(features.mean((2, 3))))
        return scores, self.cams(features)

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Binary cross-entropy with logits on the scores, averaged over classes and images."""
        scores, _ = self(images)
        return {"loss": multilabel_bce(NAME, scores, targets)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` and ``score_maps`` ``[C, h, w]`` (the CAMs, whose mean is the score)."""
        scores, maps = self(images)
        return [{"scores": s, "score_maps": m} for s, m in zip(scores.float(), maps.float())]


def build_cam(num_classes: int, **options) -> CAM:
    """``MethodSpec.build``: a :class:`CAM` for ``num_classes`` classes."""
    return CAM(num_classes, **options)
