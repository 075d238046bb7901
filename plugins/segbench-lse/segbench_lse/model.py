"""LSE: a timm backbone, a 1x1 class-map head and log-sum-exp pooling (Pinheiro and Collobert, CVPR 2015)."""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from segbench.errors import DataError
from segbench.nn.heads import ClassMapHead
from segbench.nn.backbones import feature_backbone
from segbench.nn.checks import check_bool, check_choice, check_number
from segbench.nn.losses import multilabel_bce
from segbench_lse.pooling import LSEPool2d

NAME = "lse"
LOSSES = ("bce", "softmax")


class LSENet(nn.Module):
    """Class maps ``[B, C, h, w]`` pooled to scores ``[B, C]`` by ``(1/beta) log(mean(exp(beta * map)))``.

    ``beta`` is fixed, or learned as ``exp(log_beta)`` (one value shared by
    all classes) when ``learn_beta``. Trained on the image-level labels with
    binary cross-entropy (``loss="bce"``) or the paper's softmax
    cross-entropy over classes (``loss="softmax"``).
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
        beta: float = 5.0,
        learn_beta: bool = False,
        loss: str = "bce",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        beta = check_number(NAME, "beta", beta)
        dropout = check_number(NAME, "dropout", dropout, 0.0, low_open=False, high=0.99)
        check_bool(NAME, "learn_beta", learn_beta)
        self.loss_name = check_choice(NAME, "loss", loss, LOSSES)
        self.num_classes = num_classes
        self.backbone, channels = feature_backbone(
            NAME, backbone, out_index, output_stride, pretrained, weights, backbone_args
        )
        self.head = ClassMapHead(channels, num_classes, dropout=dropout)
        self.pool = LSEPool2d(beta, learnable=learn_beta)

    def class_maps(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` normalised images -> class maps ``[B, C, h, w]`` at the feature resolution."""
        return self.head(self.backbone(images)[-1])

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled scores ``[B, C]`` and class maps ``[B, C, h, w]``."""
        maps = self.class_maps(images)
        return self.pool(maps.float()), maps

    def loss(self, images: torch.Tensor, targets: list[dict]) -> dict[str, torch.Tensor]:
        """The loss on the LSE-pooled scores.

        ``bce``: binary cross-entropy with logits, averaged over classes and
        images. ``softmax`` (the paper's): cross-entropy of the softmax over
        classes against the image's labels spread evenly over its classes
        (one class: the usual cross-entropy); images without labels and
        classes in ``labels_ignore`` are left out.
        """
        scores, _ = self(images)
        if self.loss_name == "bce":
            return {"loss": multilabel_bce(NAME, scores, targets)}
        return {"loss": softmax_cross_entropy(NAME, scores, targets)}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> list[dict]:
        """Per image: ``scores`` ``[C]`` (pooled) and ``score_maps`` ``[C, h, w]`` (class maps before pooling)."""
        scores, maps = self(images)
        return [{"scores": s, "score_maps": m} for s, m in zip(scores.float(), maps.float())]


def softmax_cross_entropy(method: str, scores: torch.Tensor, targets: list[dict]) -> torch.Tensor:
    """Cross-entropy of ``softmax(scores)`` against each image's labels normalised to sum to one."""
    scores = scores.float()
    labels = torch.stack([t["labels"] for t in targets]).to(scores.device, torch.float32)
    if labels.shape != scores.shape:
        raise DataError(f"{method}: labels have shape {tuple(labels.shape)}, scores {tuple(scores.shape)}")
    for i, t in enumerate(targets):
        if "labels_ignore" in t:
            labels[i, t["labels_ignore"].to(labels.device, torch.bool)] = 0.0
    mass = labels.sum(1)
    keep = mass > 0
    per_image = -(labels / mass.clamp_min(1e-12)[:, None] * F.log_softmax(scores, dim=1)).sum(1)
    return (per_image * keep).sum() / keep.sum().clamp_min(1)


def build_lse(num_classes: int, **options) -> LSENet:
    """``MethodSpec.build``: an :class:`LSENet` for ``num_classes`` classes."""
    return LSENet(num_classes, **options)
