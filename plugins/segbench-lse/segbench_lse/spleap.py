"""SPLeaP, small: learned part detectors, soft pooling of each part over positions, a linear classifier on top.

After Kulkarni, Jurie, Zepeda, Perez, Chevallier, "SPLeaP: Soft Pooling of
Learned Parts for Image Classification", ECCV 2016 (see the README for what
differs from the paper).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.backbones import feature_backbone
from segbench.nn.checks import check_bool, check_choice, check_int, check_number
from segbench.nn.losses import multilabel_bce
from segbench_lse.pooling import LSEPool2d, SoftmaxPool2d

NAME = "spleap"
PART_POOLS = ("softmax", "lse")


class SPLeaP(nn.Module):
    """Parts ``[B, P, h, w]`` -> soft-pooled part responses ``[B, P]`` -> linear classifier -> scores ``[B, C]``.

    ``parts``: a 1x1 convolution (or, with ``part_hidden > 0``, a 1x1 conv,
    ReLU, 1x1 conv: a non-linear part detector) giving one score map per
    part. ``pool``: per part, the softmax-weighted mean of its scores over
    positions (``part_pool="lse"``: log-sum-exp) with its own sharpness
    ``beta_p`` (learned as ``exp(log_beta)`` when ``learn_beta``).
    ``classifier``: ``nn.Linear(P, C)``. Class maps (``score_maps``) are the
    part score maps projected through the classifier weights,
    ``M_c(x, y) = sum_p W_cp s_p(x, y) + b_c``.
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
        num_parts: int = 32,
        part_hidden: int = 0,
        part_pool: str = "softmax",
        beta: float = 5.0,
        learn_beta: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        num_parts = check_int(NAME, "num_parts", num_parts, 1)
        part_hidden = check_int(NAME, "part_hidden", part_hidden, 0)
        check_choice(NAME, "part_pool", part_pool, PART_POOLS)
        beta = check_number(NAME, "beta", beta)
        check_bool(NAME, "learn_beta", learn_beta)
        dropout = check_number(NAME, "dropout", dropout, 0.0, low_open=False, high=0.99)
        self.num_classes, self.num_parts = num_classes, num_parts
        self.backbone, channels = feature_backbone(
            NAME, backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        layers: list[nn.Module] = [nn.Dropout2d(dropout)] if dropout > 0 else []
        if part_hidden:
            layers += [nn.Conv2d(channels, part_hidden, 1), nn.ReLU(inplace=True)]
            channels = part_hidden
        layers.append(nn.Conv2d(channels, num_parts, 1))
        self.parts = nn.Sequential(*layers)
        pool = SoftmaxPool2d if part_pool == "softmax" else LSEPool2d
        self.pool = pool(beta, learnable=learn_beta, channels=num_parts)
        self.classifier = nn.Linear(num_parts, num_classes)

    def part_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> part score maps ``[B, P, h, w]``."""
        return self.parts(self.backbone(images)[-1])

    def project(self, part_maps: torch.Tensor) -> torch.Tensor:
        """Part maps ``[B, P, h, w]`` -> class maps ``[B, C, h, w]`` through the classifier's weights and bias."""
        weight = self.classifier.weight.to(part_maps.dtype)[:, :, None, None]
        return F.conv2d(part_maps, weight, self.classifier.bias.to(part_maps.dtype))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[B, C]`` and class maps ``[B, C, h, w]``."""
        parts = self.part_maps(images)
        scores = self.classifier(self.pool(parts.float()))
        return scores, self.project(parts)

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """Binary cross-entropy with logits on the scores, averaged over classes and images."""
        scores, _ = self(images)
        return {"loss": multilabel_bce(NAME, scores, targets)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` and ``score_maps`` ``[C, h, w]`` (projected part maps)."""
        scores, maps = self(images)
        return [{"scores": s, "score_maps": m} for s, m in zip(scores.float(), maps.float())]


def build_spleap(num_classes: int, **options) -> SPLeaP:
    """``MethodSpec.build``: a :class:`SPLeaP` for ``num_classes`` classes."""
    return SPLeaP(num_classes, **options)
