"""Losses shared by image-supervised methods."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from segbench.errors import DataError


def multilabel_bce(method: str, scores: torch.Tensor, targets: list[dict], reduction: str = "mean") -> torch.Tensor:
    """Binary cross-entropy with logits, every class an independent problem.

    ``reduction="mean"`` averages over the counted (image, class) pairs;
    ``"sum"`` sums over classes and averages over images (Oquab et al.'s
    per-class log-loss sum). Classes in a target's optional
    ``labels_ignore`` do not count.
    """
    scores = scores.float()
    labels = torch.stack([t["labels"] for t in targets]).to(scores.device, torch.float32)
    if labels.shape != scores.shape:
        raise DataError(f"{method}: labels have shape {tuple(labels.shape)}, scores {tuple(scores.shape)}")
    weight = torch.ones_like(labels)
    if any("labels_ignore" in t for t in targets):
        none = torch.zeros(labels.shape[1], dtype=torch.bool)
        ignore = [t.get("labels_ignore", none).to(weight.device, torch.bool) for t in targets]
        weight = (~torch.stack(ignore)).to(weight)
    per_class = F.binary_cross_entropy_with_logits(scores, labels, reduction="none") * weight
    if reduction == "sum":
        return per_class.sum() / labels.shape[0]
    return per_class.sum() / weight.sum().clamp_min(1.0)
