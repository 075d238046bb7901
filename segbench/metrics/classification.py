"""``cls_map``: per-class average precision of image-level scores, and its mean.

Follows the VOC devkit's ``VOCevalcls.m``: each class ranks every image by
its score; an image whose ``labels[c]`` is 1 is a positive, 0 a negative, and
an image whose ``labels_ignore[c]`` is set ("difficult") is left out of that
class's AP. The mean is over the classes with at least one positive, the
background class excluded. See ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from segbench.errors import DataError
from segbench.metrics.average_precision import (
    RowMetric,
    average_precision,
    check_variant,
    get_tensor,
    nanmean,
    stack_rows,
)


class ClassificationMAP(RowMetric):
    """Image-level classification mAP (``variant``: voc12, voc07 or raw)."""

    name = "cls_map"
    # gt codes as in the devkit: 1 positive, -1 negative, 0 ignored ("difficult").
    state_reductions: ClassVar[dict[str, str]] = {"scores": "cat", "gt": "cat"}
    _dtypes: ClassVar[dict[str, torch.dtype]] = {"scores": torch.float64, "gt": torch.int8}

    def __init__(self, num_classes: int | None = None, background: int | None = None, variant: str = "voc12") -> None:
        self.variant = check_variant(variant, self.name)
        super().__init__(num_classes, background)

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``scores`` [C] per prediction, ``labels`` (and ``labels_ignore``) per target."""
        if len(predictions) != len(targets):
            raise DataError(f"metric 'cls_map': {len(predictions)} predictions for {len(targets)} targets")
        if not predictions:
            return
        scores = stack_rows([get_tensor(p, "scores", "prediction", self.name) for p in predictions],
                            "scores", self.name).to("cpu", torch.float64)
        labels = stack_rows([get_tensor(t, "labels", "target", self.name) for t in targets], "labels", self.name)
        if scores.shape != labels.shape:
            raise DataError(
                f"metric 'cls_map': scores have {scores.shape[1]} classes but labels have {labels.shape[1]}"
            )
        self._set_num_classes(scores.shape[1])
        if torch.isnan(scores).any():
            raise DataError("metric 'cls_map': prediction scores contain NaN")
        gt = torch.where(labels.cpu() > 0.5, 1, -1).to(torch.int8)
        if any("labels_ignore" in t for t in targets):
            none = torch.zeros(gt.shape[1], dtype=torch.bool)
            ignore = stack_rows(
                [get_tensor(t, "labels_ignore", "target", self.name).cpu() if "labels_ignore" in t else none
                 for t in targets], "labels_ignore", self.name)
            if ignore.shape != gt.shape:
                raise DataError(f"metric 'cls_map': labels_ignore has {ignore.shape[1]} classes, "
                                f"expected {gt.shape[1]}")
            gt = gt.masked_fill(ignore.to(torch.bool), 0)
        self._rows["scores"].append(scores)
        self._rows["gt"].append(gt)

    def _per_class(self) -> torch.Tensor:
        state = self.state_tensors()
        gt = state["gt"]
        ap = average_precision(state["scores"], gt > 0, gt < 0, variant=self.variant)
        return self._mean_excluding(ap)

    def compute(self) -> dict[str, float]:
        """``{"cls_map": mean AP over classes with a positive, background excluded}``."""
        return {"cls_map": nanmean(self._per_class())}

    def per_class(self) -> dict[str, list[float]]:
        """``{"cls_map": [AP per class]}``, NaN for the background and classes without a positive."""
        return {"cls_map": self._per_class().tolist()}

