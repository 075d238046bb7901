"""``pxap``: pixel average precision (PxAP) of Choe et al. (CVPR 2020) and the best pixel IoU (PIoU).

Per sample (image, class present in its ``mask``) the class map is min-max
normalised (``wsol_maps``); its values at the class's pixels (foreground)
and at the image's other non-void pixels (background) go to two histograms
with bin edges ``[0, 1/bins, ..., (bins-1)/bins, 1, 2, 3]`` (wsolevaluation
``MaskEvaluator``, ``evaluation.py:348-353, 356-380``). ``compute`` turns the
summed histograms into precision and recall at every bin edge
(``evaluation.py:382-416``). Memory: two int64 vectors of ``bins + 2``,
whatever the number of images; they are summed across ranks.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor
from segbench.metrics.wsol_maps import check_classes, class_maps, normalise


def bin_index(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """For values in [0, 1]: ``i`` with ``edges[i] <= v < edges[i + 1]`` (``edges`` = k / bins, then 1), the
    value 1 in bin ``bins`` (``[1, 2)``), as ``np.histogram`` bins them."""
    bins = edges.size - 1
    index = np.minimum(np.floor(values * bins), bins).astype(np.int64)
    index -= values < edges[index]  # float rounding of values * bins, one bin either way
    index += (index < bins) & (values >= edges[np.minimum(index + 1, bins)])
    return index


def precision_recall(foreground: np.ndarray, background: np.ndarray) -> tuple[np.ndarray, ...]:
    """``tp``, ``fp``, precision and recall at every bin's left edge from the top, as ``evaluation.py:397-410``."""
    tp = np.cumsum(foreground[::-1]).astype(np.float64)
    fp = np.cumsum(background[::-1]).astype(np.float64)
    scored = tp + fp
    precision = np.divide(tp, scored, out=np.zeros_like(tp), where=scored > 0)
    recall = tp / tp[-1] if tp[-1] > 0 else np.full_like(tp, np.nan)
    return tp, fp, precision, recall


class PixelAP:
    """``pxap`` (area under the pixel precision-recall curve) and ``pxap@best_iou`` (PIoU)."""

    name: ClassVar[str] = "pxap"
    state_reductions: ClassVar[dict[str, str]] = {"foreground": "sum", "background": "sum"}

    def __init__(self, num_classes: int | None = None, background: int | None = None, bins: int = 1000,
                 ignore_index: int | None = 255) -> None:
        check_classes(num_classes, background, self.name)
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ConfigError(f"metric 'pxap': bins must be a positive integer, got {bins!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ConfigError(f"metric 'pxap': ignore_index must be an integer or none, got {ignore_index!r}")
        self.num_classes, self.background, self.bins, self.ignore_index = num_classes, background, bins, ignore_index
        self.edges = np.arange(bins + 1, dtype=np.float64) / bins
        self.reset()

    def reset(self) -> None:
        """Forget every pixel seen."""
        self.foreground = torch.zeros(self.bins + 2, dtype=torch.int64)
        self.background_hist = torch.zeros(self.bins + 2, dtype=torch.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Histograms int64 ``[bins + 2]`` of the normalised scores at foreground and background pixels."""
        return {"foreground": self.foreground, "background": self.background_hist}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state (e.g. by its sum over ranks)."""
        for key in self.state_reductions:
            if tuple(state[key].shape) != (self.bins + 2,):
                raise DataError(f"metric 'pxap': state '{key}' has shape {tuple(state[key].shape)}, expected "
                                f"({self.bins + 2},) (another bins?)")
        self.foreground = state["foreground"].to(torch.int64)
        self.background_hist = state["background"].to(torch.int64)

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``score_maps`` [C, H, W] per prediction, the class ``mask`` [H, W] per target."""
        maps = class_maps(predictions, targets, self.name, self.num_classes)
        width = self.bins + 2
        for m, t in zip(maps, targets):
            mask = get_tensor(t, "mask", "target", self.name).cpu().as_subclass(torch.Tensor).numpy()
            if mask.shape != tuple(m.shape[1:]):
                raise DataError(f"metric 'pxap': mask is {mask.shape} but score_maps are {tuple(m.shape[1:])}")
            valid = mask != self.ignore_index if self.ignore_index is not None else np.ones(mask.shape, bool)
            labels = mask[valid].astype(np.int64)
            present = np.unique(labels)
            if present.size and (present[0] < 0 or present[-1] >= m.shape[0]):
                bad = present[(present < 0) | (present >= m.shape[0])][0]
                raise DataError(f"metric 'pxap': mask value {bad} is outside 0..{m.shape[0] - 1} and not "
                                f"ignore_index {self.ignore_index}")
            for c in present.tolist():
                if c == self.background:
                    continue
                index = bin_index(normalise(m[c], self.name)[valid].astype(np.float64), self.edges)
                counts = np.bincount(index + width * (labels != c), minlength=2 * width)
                self.foreground += torch.from_numpy(counts[:width])
                self.background_hist += torch.from_numpy(counts[width:])

    def compute(self) -> dict[str, float]:
        """``pxap`` and ``pxap@best_iou`` as fractions; NaN before any foreground pixel."""
        tp, fp, precision, recall = precision_recall(self.foreground.numpy(), self.background_hist.numpy())
        if not tp[-1] > 0:
            return {"pxap": float("nan"), "pxap@best_iou": float("nan")}
        scored = (tp + fp) > 0
        auc = float((precision[1:] * np.diff(recall))[scored[1:]].sum())
        return {"pxap": auc, "pxap@best_iou": float((tp / (tp[-1] + fp)).max())}
