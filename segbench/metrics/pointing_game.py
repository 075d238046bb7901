"""``pointing_game``: the pointing game of Zhang et al. (ECCV 2016), as TorchRay's ``PointingGame``.

Per sample (image, present class; ``wsol_maps``) the point is the class map's
maximum (the first in row-major order, as ``loc_map``). It is a hit when some
pixel ``(i, j)`` of the class's ground-truth region lies at
``(i - row)**2 + (j - col)**2 < tolerance**2`` from it (TorchRay
``pointing_game.py:76-85``). The region is the union of the class's instance
masks where the target has ``masks``, else of its boxes
(``datasets.py:98-125``). Per class accuracy is hits / (hits + misses); the
metric is their mean over the classes with a sample. ``subset="difficult"``
keeps only samples whose region covers less than a quarter of the image in
images with another class (Zhang et al.'s "difficult" set). The state is hit and miss
counts per class, summed across ranks.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import nanmean
from segbench.metrics.pointing import first_maximum
from segbench.metrics.wsol_maps import box_classes, check_classes, class_maps, target_boxes

SUBSETS = ("all", "difficult")
DIFFICULT_AREA = 0.25  # Zhang et al.: the class covers less than 1/4 of the image


def box_pixels(box: np.ndarray, height: int, width: int) -> tuple[int, int, int, int]:
    """Inclusive rows and columns ``(r0, r1, c0, c1)`` of the pixels whose centre lies in an XYXY box (clipped)."""
    c0, r0 = int(np.ceil(box[0] - 0.5)), int(np.ceil(box[1] - 0.5))
    c1, r1 = int(np.floor(box[2] - 0.5)), int(np.floor(box[3] - 0.5))
    return max(r0, 0), min(r1, height - 1), max(c0, 0), min(c1, width - 1)


def region_of(target: dict, c: int, boxes: np.ndarray, classes: np.ndarray, size: tuple[int, int],
              metric: str) -> np.ndarray:
    """The class's ground-truth region, bool ``[H, W]``: its instance masks' union, else its boxes' union."""
    masks = target.get("masks")
    if masks is not None and len(masks) == classes.size and classes.size:
        masks = torch.as_tensor(masks).cpu().as_subclass(torch.Tensor)
        if tuple(masks.shape[1:]) != size:
            raise DataError(f"metric '{metric}': instance masks are {tuple(masks.shape[1:])} but the image is {size}")
        return masks[torch.from_numpy(classes == c)].bool().any(0).numpy()
    region = np.zeros(size, dtype=bool)
    for box in boxes[classes == c]:
        r0, r1, c0, c1 = box_pixels(box, *size)
        region[r0:r1 + 1, c0:c1 + 1] = True
    return region


def hits(region: np.ndarray, row: int, col: int, tolerance: float) -> bool:
    """True when a pixel of ``region`` lies at squared distance ``< tolerance**2`` from ``(row, col)``."""
    reach = int(np.ceil(tolerance))
    r0, c0 = max(row - reach, 0), max(col - reach, 0)
    window = region[r0:row + reach + 1, c0:col + reach + 1]
    rows, cols = np.nonzero(window)
    return bool((((rows + r0 - row) ** 2 + (cols + c0 - col) ** 2) < tolerance ** 2).any())


class PointingGame:
    """Pointing game accuracy: ``pointing_game`` (mean over classes) and ``per_class()``."""

    name: ClassVar[str] = "pointing_game"
    state_reductions: ClassVar[dict[str, str]] = {"hits": "sum", "misses": "sum"}

    def __init__(self, num_classes: int | None = None, background: int | None = None, tolerance: float = 15,
                 subset: str = "all") -> None:
        check_classes(num_classes, background, self.name)
        if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance > 0:
            raise ConfigError(f"metric 'pointing_game': tolerance must be a number of pixels > 0, got {tolerance!r}")
        if subset not in SUBSETS:
            raise ConfigError(f"metric 'pointing_game': subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
        self.num_classes, self.background = num_classes, background
        self.tolerance, self.subset = float(tolerance), subset
        self.reset()

    def reset(self) -> None:
        """Forget every sample seen."""
        c = self.num_classes or 0
        self.hits = torch.zeros(c, dtype=torch.int64)
        self.misses = torch.zeros(c, dtype=torch.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``hits`` and ``misses`` int64 ``[C]``."""
        return {"hits": self.hits, "misses": self.misses}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state (e.g. by its sum over ranks)."""
        hit, miss = state["hits"].to(torch.int64).reshape(-1), state["misses"].to(torch.int64).reshape(-1)
        if hit.shape != miss.shape:
            raise DataError("metric 'pointing_game': hits and misses disagree on the number of classes")
        if hit.numel():
            self._set_num_classes(hit.numel())
        self.hits, self.misses = hit, miss

    def _set_num_classes(self, c: int) -> None:
        if self.num_classes is None or self.hits.numel() == 0:
            self.num_classes = c
            if self.hits.numel() != c:
                self.hits, self.misses = torch.zeros(c, dtype=torch.int64), torch.zeros(c, dtype=torch.int64)
        elif self.num_classes != c:
            raise DataError(f"metric 'pointing_game': expected {self.num_classes} classes, got {c}")
        if self.background is not None and not 0 <= self.background < c:
            raise ConfigError(f"metric 'pointing_game': background {self.background} is not a class index "
                              f"(0..{c - 1})")

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``score_maps`` [C, H, W] per prediction, ``boxes``, ``classes`` (and ``masks``) per target."""
        maps = class_maps(predictions, targets, self.name, self.num_classes)
        for m, t in zip(maps, targets):
            c_all, size = m.shape[0], (m.shape[1], m.shape[2])
            self._set_num_classes(c_all)
            boxes, classes = target_boxes(t, self.name)
            others = {int(k) for k in classes if k != self.background}  # distractors: any other object class
            present = box_classes(t, self.name, c_all, self.background)
            if not present:
                continue
            scored = m[present]
            if torch.isnan(scored).any():
                raise DataError("metric 'pointing_game': score_maps contain NaN")
            _, index = first_maximum(scored)
            for c, flat in zip(present, index.tolist()):
                region = region_of(t, c, boxes, classes, size, self.name)
                if self.subset == "difficult" and not (region.mean() < DIFFICULT_AREA and others - {c}):
                    continue
                if hits(region, flat // size[1], flat % size[1], self.tolerance):
                    self.hits[c] += 1
                else:
                    self.misses[c] += 1

    def _per_class(self) -> torch.Tensor:
        total = (self.hits + self.misses).to(torch.float64)
        accuracy = self.hits.to(torch.float64) / total  # NaN for classes without a sample
        if self.background is not None and accuracy.numel():
            accuracy[self.background] = float("nan")
        return accuracy

    def compute(self) -> dict[str, float]:
        """``{"pointing_game": mean per-class accuracy over the classes with a sample}`` (NaN before any)."""
        return {"pointing_game": nanmean(self._per_class())}

    def per_class(self) -> dict[str, list[float]]:
        """``{"pointing_game": [accuracy per class]}``, NaN for the background and classes without a sample."""
        return {"pointing_game": self._per_class().tolist()}
