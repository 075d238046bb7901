"""``miou``: mean intersection over union from one confusion matrix over the dataset.

The matrix ``M[i, j]`` counts pixels of ground-truth class ``i`` predicted as
``j``, summed over every image before any ratio is taken (the VOC protocol;
a mean of per-image IoUs is a different number). Pixels whose ground truth
is ``ignore_index`` (255, VOC's void border) are not counted. Definitions as
in the FCN reference code (``score.py``): ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor, nanmean


class MeanIoU:
    """Confusion-matrix metric: ``miou``, ``pixel_acc``, ``mean_acc``, ``fw_iou``.

    DDP: the state is one int64 ``[C, C]`` tensor; ``state_reductions`` says
    ``"sum"``, so the engine ``all_reduce``-sums it and calls
    :meth:`load_state_tensors`.
    """

    name: ClassVar[str] = "miou"
    state_reductions: ClassVar[dict[str, str]] = {"confmat": "sum"}
    STEP: ClassVar[int] = (1 << 15) - 1  # pixels per piece on a multi-threaded CPU: under ATen's grain (32768)
    STEP_ONE_THREAD: ClassVar[int] = 1 << 17  # on one thread: no other core to wait for, fewer pieces

    def __init__(self, num_classes: int | None = None, ignore_index: int | None = 255,
                 background: int | None = None) -> None:
        if num_classes is None:
            raise ConfigError("metric 'miou' needs num_classes (the engine passes the dataset's)")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ConfigError(f"metric 'miou': num_classes must be a positive integer, got {num_classes!r}")
        if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
            raise ConfigError(f"metric 'miou': ignore_index must be an integer or None, got {ignore_index!r}")
        if ignore_index is not None and 0 <= ignore_index < num_classes:
            raise ConfigError(f"metric 'miou': ignore_index {ignore_index} is a class index (0..{num_classes - 1})")
        if background is not None and (isinstance(background, bool) or not isinstance(background, int)
                                       or not 0 <= background < num_classes):
            raise ConfigError(f"metric 'miou': background must be None or a class index, got {background!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background = background
        self._buffer: torch.Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Zero the confusion matrix."""
        self.confmat = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``{"confmat": int64 [C, C]}`` (summed across ranks)."""
        return {"confmat": self.confmat}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the confusion matrix (e.g. by the sum over ranks)."""
        confmat = state["confmat"]
        if tuple(confmat.shape) != (self.num_classes, self.num_classes):
            raise DataError(f"metric 'miou': confmat of shape {tuple(confmat.shape)}, "
                            f"expected ({self.num_classes}, {self.num_classes})")
        self.confmat = confmat.to(torch.int64)

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``mask`` [H, W] in each prediction and each target.

        Every pair is checked first, then the whole batch is counted in one
        pass (:meth:`_histogram`); a bad value adds nothing of the batch.
        """
        if len(predictions) != len(targets):
            raise DataError(f"metric 'miou': {len(predictions)} predictions for {len(targets)} targets")
        pairs = []
        for i, (p, t) in enumerate(zip(predictions, targets)):
            pred = get_tensor(p, "mask", "prediction", self.name)
            gt = get_tensor(t, "mask", "target", self.name).as_subclass(torch.Tensor)
            if pred.shape != gt.shape:
                raise DataError(f"metric 'miou': predicted mask {i} has shape {tuple(pred.shape)} "
                                f"but the target mask has {tuple(gt.shape)}")
            if pred.is_floating_point() or pred.dtype == torch.bool or gt.is_floating_point():
                raise DataError(f"metric 'miou': masks must be integer class maps, got {pred.dtype} "
                                f"prediction and {gt.dtype} target")
            pairs.append((pred.reshape(-1).to(torch.int64), gt.reshape(-1).to(pred.device, torch.int64)))
        if not pairs:
            return
        counts = self._histogram(pairs)
        if self.confmat.device != counts.device:
            self.confmat = self.confmat.to(counts.device)
        self.confmat += counts

    def _histogram(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Confusion counts ``[C, C]`` of flat int64 (prediction, target) masks, in one pass over them all.

        Fast path, when every prediction is a class and every target a class
        or the ignore index: pixel (g, p) goes to bin g*C + p of one running
        histogram (ignored pixels land in bins ignore*C .. ignore*C+C-1, which
        are dropped). On the CPU the pixels go through in pieces of ``STEP``,
        just under ATen's parallel grain when torch has several threads: each
        piece's min/max check, add and bincount then run on one thread, in
        cache, and never wait for another core (ATen's bincount starts with two
        parallel reductions: one bincount over a whole batch stalls on a busy
        machine). On one thread the pieces are ``STEP_ONE_THREAD`` long.
        """
        c, ignore = self.num_classes, self.ignore_index
        device = pairs[0][0].device
        if any(pred.device != device for pred, _ in pairs):
            return self._histogram_each(pairs)
        wide = ignore is not None and ignore >= c and (ignore + 1) * c <= 1 << 22
        total = torch.zeros((ignore + 1) * c if wide else c * c, dtype=torch.int64, device=device)
        longest = max(pred.numel() for pred, _ in pairs)
        step = (max(longest, 1) if device.type != "cpu"
                else self.STEP if torch.get_num_threads() > 1 else self.STEP_ONE_THREAD)
        scratch = self._scratch(min(longest, step), device)
        for pred, gt in pairs:
            for start in range(0, pred.numel(), step):
                p, g = pred[start:start + step], gt[start:start + step]
                p_low, p_high = torch.aminmax(p)
                g_low, g_high = torch.aminmax(g)
                g_high = int(g_high)
                if not (int(p_low) >= 0 and int(p_high) < c and int(g_low) >= 0
                        and (g_high < c or (wide and g_high == ignore))):
                    return self._histogram_each(pairs)
                counts = torch.bincount(torch.add(p, g, alpha=c, out=scratch[: p.numel()]), minlength=c * c)
                total[: counts.numel()] += counts
        if total.numel() > c * c and total[c * c:ignore * c].any():
            self._histogram_each(pairs)  # a target value between C and ignore: raises
        return total[: c * c].view(c, c)

    def _histogram_each(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Checked counts, pair by pair; raises :class:`DataError` at the first bad value."""
        c = self.num_classes
        total = torch.zeros((c, c), dtype=torch.int64, device=pairs[0][0].device)
        for pred, gt in pairs:
            total = total + self._histogram_checked(pred, gt).to(total.device)
        return total

    def _scratch(self, numel: int, device: torch.device) -> torch.Tensor:
        """An int64 buffer of ``numel`` elements, kept between batches (no large allocation per batch)."""
        buffer = self._buffer
        if buffer is None or buffer.numel() < numel or buffer.device != device:
            buffer = self._buffer = torch.empty(numel, dtype=torch.int64, device=device)
        return buffer[:numel]

    def _histogram_checked(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Confusion counts with every value checked; raises :class:`DataError` on a bad one."""
        c = self.num_classes
        valid = gt != self.ignore_index if self.ignore_index is not None else torch.ones_like(gt, dtype=torch.bool)
        bad = ((pred < 0) | (pred >= c)) & valid
        if bad.any():
            raise DataError(f"metric 'miou': predicted class {int(pred[bad][0])} is outside 0..{c - 1} "
                            f"at {int(bad.sum())} pixel(s) not ignored")
        bad = ((gt < 0) | (gt >= c)) & valid
        if bad.any():
            raise DataError(f"metric 'miou': target mask has class {int(gt[bad][0])} outside "
                            f"0..{c - 1} (ignore_index is {self.ignore_index})")
        # Bin C*C takes the ignored pixels and is dropped.
        counts = torch.bincount(torch.where(valid, gt * c + pred, c * c), minlength=c * c + 1)
        return counts[: c * c].view(c, c)

    def _per_class(self) -> tuple[torch.Tensor, torch.Tensor]:
        cm = self.confmat.cpu().to(torch.float64)
        tp = cm.diagonal()
        gt_pixels, pred_pixels = cm.sum(1), cm.sum(0)
        iou = tp / (gt_pixels + pred_pixels - tp)  # NaN (0/0) where the class is absent from both
        acc = tp / gt_pixels  # NaN where the class has no ground-truth pixel
        return iou, acc

    def compute(self) -> dict[str, float]:
        """``miou``, ``pixel_acc``, ``mean_acc`` and ``fw_iou`` as fractions (NaN before any pixel)."""
        iou, acc = self._per_class()
        cm = self.confmat.cpu().to(torch.float64)
        total = cm.sum()
        gt_pixels = cm.sum(1)
        freq = gt_pixels / total
        seen = gt_pixels > 0
        fw_iou = float((freq[seen] * iou[seen]).sum()) if total > 0 else float("nan")
        excluded = self._excluded(iou)
        return {
            "miou": nanmean(excluded),
            "pixel_acc": float(cm.diagonal().sum() / total) if total > 0 else float("nan"),
            "mean_acc": nanmean(self._excluded(acc)),
            "fw_iou": fw_iou,
        }

    def per_class(self) -> dict[str, list[float]]:
        """The values behind the means: IoU per class under ``miou``, accuracy per class under
        ``mean_acc``; NaN where a class is absent (or is the excluded background)."""
        iou, acc = self._per_class()
        return {"miou": self._excluded(iou).tolist(), "mean_acc": self._excluded(acc).tolist()}

    def confusion(self) -> list[list[int]]:
        """The confusion matrix as lists of ints: rows the ground truth, columns the prediction, void left out."""
        return self.confmat.cpu().tolist()

    def _excluded(self, values: torch.Tensor) -> torch.Tensor:
        if self.background is None:
            return values
        values = values.clone()
        values[self.background] = float("nan")
        return values



def confusion_matrices(metrics: Mapping[str, Any]) -> dict[str, list[list[int]]]:
    """``{name: matrix}`` of every :class:`MeanIoU` among ``metrics`` (a run record's ``confusion``)."""
    return {name: metric.confusion() for name, metric in metrics.items() if isinstance(metric, MeanIoU)}
