"""``max_box_acc``: MaxBoxAcc and MaxBoxAccV2 of Choe et al. (CVPR 2020), with GT-known and top-1 localization.

Per sample (image, present class; ``wsol_maps``) the class map is min-max
normalised and quantised to uint8 as wsolevaluation does
(``evaluation.py:132``); at each threshold ``t`` of ``np.arange(0, 1,
cam_curve_interval)`` the pixels ``q > int(t * 255)`` are kept
(``evaluation.py:135-139``), split into 8-connected components
(:mod:`segbench.metrics.components`) and boxed. MaxBoxAcc scores the largest
component (by pixel count), MaxBoxAccV2 every component (the best match); a
sample is correct when that box's best IoU with a ground-truth box of its
class reaches the IoU threshold (``evaluation.py:257-271``). The state is
counts per threshold, summed across ranks. Definitions and the deviations
from the reference: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor
from segbench.metrics.components import superlevel_components
from segbench.metrics.wsol_maps import (
    box_classes,
    check_classes,
    check_fraction,
    check_interval,
    class_maps,
    normalise,
    quantise,
    target_boxes,
)

NO_BOX = np.array([[0.0, 0.0, 1.0, 1.0]])  # no component: the reference's box [0, 0, 0, 0], pixel (0, 0)


def check_iou_thresholds(values: object, metric: str) -> list[float]:
    """IoU thresholds in percent, each in (0, 100], at least one."""
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    if not isinstance(values, (list, tuple)) or not values or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 100 for v in values):
        raise ConfigError(f"metric '{metric}': iou_thresholds must be a non-empty list of percents in (0, 100], "
                          f"got {values!r}")
    return [float(v) for v in values]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[len(a), len(b)]`` of XYXY boxes in continuous pixel coordinates; 0 where the union is empty."""
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def best_ious(q: np.ndarray, levels: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per level of ``levels``: the best IoU with ``gt`` of the largest component's box, and of any component's."""
    comps = superlevel_components(q, levels)
    fallback = box_iou(NO_BOX, gt).max(initial=0.0)
    largest = np.full(levels.size, fallback)
    every = np.full(levels.size, fallback)
    if comps.level.size:
        boxes = np.stack([comps.x0, comps.y0, comps.x1 + 1, comps.y1 + 1], 1).astype(np.float64)
        iou = box_iou(boxes, gt).max(1, initial=0.0)
        starts = np.flatnonzero(np.r_[True, comps.level[1:] != comps.level[:-1]])  # sorted by level
        every[comps.level[starts]] = np.maximum.reduceat(iou, starts)
        # the largest component of each level, the first in raster order on ties
        order = np.lexsort((np.arange(comps.level.size), -comps.size, comps.level))
        first = order[np.r_[True, comps.level[order][1:] != comps.level[order][:-1]]]
        largest[comps.level[first]] = iou[first]
    return largest, every


class MaxBoxAcc:
    """``max_box_acc``, ``max_box_acc_v2`` (and per IoU), their best thresholds, ``gt_known_loc``, ``top1_loc``."""

    name: ClassVar[str] = "max_box_acc"
    state_reductions: ClassVar[dict[str, str]] = {
        "correct_largest": "sum", "correct_all": "sum", "top1_correct": "sum", "samples": "sum", "top1_samples": "sum",
    }

    def __init__(self, num_classes: int | None = None, background: int | None = None,
                 cam_curve_interval: float = 0.01, iou_thresholds: Sequence[float] = (30, 50, 70),
                 cam_threshold: float | None = None) -> None:
        check_classes(num_classes, background, self.name)
        self.num_classes, self.background = num_classes, background
        self.thresholds = check_interval(cam_curve_interval, self.name, "cam_curve_interval")
        self.cam_threshold = check_fraction(cam_threshold, self.name, "cam_threshold")
        self.iou_thresholds = check_iou_thresholds(list(iou_thresholds) if isinstance(iou_thresholds, tuple)
                                                   else iou_thresholds, self.name)
        self._ious = sorted(set(self.iou_thresholds) | {50.0})
        grid = list(self.thresholds) + ([self.cam_threshold] if self.cam_threshold is not None else [])
        cuts = np.array([int(t * 255) for t in grid], dtype=np.int64)  # cv2.threshold's thresh (evaluation.py:137)
        self._levels = np.unique(cuts)
        self._level_of = np.searchsorted(self._levels, cuts)
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen."""
        k = self._level_of.size
        self.correct_largest = torch.zeros((k, len(self._ious)), dtype=torch.int64)
        self.correct_all = torch.zeros((k, len(self._ious)), dtype=torch.int64)
        self.top1_correct = torch.zeros(k, dtype=torch.int64)
        self.samples = torch.zeros((), dtype=torch.int64)
        self.top1_samples = torch.zeros((), dtype=torch.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Counts per threshold (rows; the last is ``cam_threshold`` when set) and IoU threshold (columns)."""
        return {key: getattr(self, key) for key in self.state_reductions}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state (e.g. by its sum over ranks)."""
        for key in self.state_reductions:
            value = torch.as_tensor(state[key]).to(torch.int64)
            if value.shape != getattr(self, key).shape:
                raise DataError(f"metric '{self.name}': state '{key}' has shape {tuple(value.shape)}, expected "
                                f"{tuple(getattr(self, key).shape)} (other cam_curve_interval or iou_thresholds?)")
            setattr(self, key, value)

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``score_maps`` [C, H, W] (and optionally ``scores``) per prediction, ``boxes`` and
        ``classes`` (and ``labels``) per target."""
        maps = class_maps(predictions, targets, self.name, self.num_classes)
        cuts = torch.tensor(self._ious, dtype=torch.float64) / 100
        for m, p, t in zip(maps, predictions, targets):
            c_all = m.shape[0]
            if self.background is not None and not 0 <= self.background < c_all:
                raise ConfigError(f"metric '{self.name}': background {self.background} is not a class index "
                                  f"(0..{c_all - 1})")
            boxes, classes = target_boxes(t, self.name)
            top1 = self._top1(p, t, c_all)
            for c in box_classes(t, self.name, c_all, self.background):
                largest, every = best_ious(quantise(normalise(m[c], self.name)), self._levels, boxes[classes == c])
                largest = torch.from_numpy(largest[self._level_of])[:, None]
                every = torch.from_numpy(every[self._level_of])[:, None]
                self.correct_largest += largest >= cuts
                self.correct_all += every >= cuts
                self.samples += 1
                if top1 is not None:
                    self.top1_samples += 1
                    if top1 == c:
                        self.top1_correct += largest[:, 0] >= 0.5

    def _top1(self, prediction: dict, target: dict, c: int) -> int | None:
        """The top-1 class of the image scores where the method gives them and the image has one label."""
        if "scores" not in prediction or "labels" not in target:
            return None
        labels = get_tensor(target, "labels", "target", self.name).reshape(-1)
        if int((labels > 0.5).sum()) != 1:
            return None
        scores = get_tensor(prediction, "scores", "prediction", self.name).cpu().reshape(-1).to(torch.float64)
        if scores.numel() != c:
            raise DataError(f"metric '{self.name}': scores have {scores.numel()} classes but score_maps have {c}")
        if torch.isnan(scores).any():
            raise DataError(f"metric '{self.name}': prediction scores contain NaN")
        if self.background is not None:
            scores = scores.clone()
            scores[self.background] = float("-inf")
        return int(scores.argmax())

    def compute(self) -> dict[str, float]:
        """Fractions (NaN before any sample); thresholds are values of the grid ``np.arange(0, 1, interval)``;
        ``top1_loc`` only where some sample is eligible."""
        n, k = int(self.samples), self.thresholds.size
        out: dict[str, float] = {}
        nan = float("nan")
        j50 = self._ious.index(50.0)
        acc = self.correct_largest.to(torch.float64) / n if n else None
        best = int(acc[:k, j50].argmax()) if n else 0
        out["max_box_acc"] = float(acc[best, j50]) if n else nan
        out["max_box_acc_threshold"] = float(self.thresholds[best]) if n else nan
        parts = []
        for iou in self.iou_thresholds:
            name = f"{iou:g}"
            column = self.correct_all[:k, self._ious.index(iou)].to(torch.float64) / n if n else None
            value = float(column.max()) if n else nan
            parts.append(value)
            out[f"max_box_acc_v2@iou{name}"] = value
            out[f"max_box_acc_v2_threshold@iou{name}"] = float(self.thresholds[int(column.argmax())]) if n else nan
        out["max_box_acc_v2"] = float(np.mean(parts))
        at = best if self.cam_threshold is None else k  # the extra row holds cam_threshold
        out["gt_known_loc"] = float(acc[at, j50]) if n else nan
        m = int(self.top1_samples)
        if m:  # absent without a single-label image scored by a method with image scores
            out["top1_loc"] = int(self.top1_correct[at]) / m
        return out
