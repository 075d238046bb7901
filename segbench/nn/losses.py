"""Multi-label losses shared by image-supervised methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segbench.errors import DataError


def label_weights(method: str, targets: list[dict], num_classes: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Image labels ``[B, C]`` (float) and loss weights: 0 where a target's optional ``labels_ignore`` is set."""
    labels = torch.stack([t["labels"] for t in targets]).to(device, torch.float32)
    if labels.shape[1] != num_classes:
        raise DataError(f"{method}: labels have shape {tuple(labels.shape)}, expected [B, {num_classes}]")
    weight = torch.ones_like(labels)
    if any("labels_ignore" in t for t in targets):
        none = torch.zeros(num_classes, dtype=torch.bool)
        ignore = [t.get("labels_ignore", none).to(device, torch.bool) for t in targets]
        weight = (~torch.stack(ignore)).to(weight)
    return labels, weight


def weighted_bce(scores: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, reduction: str = "mean"):
    """BCE with logits per (image, class), weighted; ``mean`` averages over the weight, ``sum`` sums over classes
    and averages over images (Oquab et al.'s per-class log-loss sum)."""
    per_class = F.binary_cross_entropy_with_logits(scores.float(), labels, reduction="none") * weight
    if reduction == "sum":
        return per_class.sum() / labels.shape[0]
    return per_class.sum() / weight.sum().clamp_min(1.0)


def multilabel_bce(method: str, scores: torch.Tensor, targets: list[dict], reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy with logits of ``scores`` ``[B, C]`` against the targets' labels, every class an
    independent problem; classes in ``labels_ignore`` do not count (see :func:`weighted_bce` for ``reduction``)."""
    labels, weight = label_weights(method, targets, scores.shape[1], scores.device)
    if labels.shape != scores.shape:
        raise DataError(f"{method}: labels have shape {tuple(labels.shape)}, scores {tuple(scores.shape)}")
    return weighted_bce(scores, labels, weight, reduction)
