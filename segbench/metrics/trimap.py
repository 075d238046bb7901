"""``trimap``: mean IoU restricted to bands around ground-truth boundaries (DeepLab's trimap experiment).

A pixel ``p`` with ground-truth label ``g(p)`` (not void) is in the band of
width ``w`` when some pixel ``q`` with a different ground-truth label lies
within distance ``w``: ``d(p) = min{|p - q| : g(q) != g(p)} <= w``. Void
(``ignore_index``) counts as a different label (``void_is_boundary=True``):
on VOC, whose objects are outlined by a void band, this is DeepLab's "band of
'void' labels". Void pixels themselves are never counted. ``d`` is a scipy
distance transform (Euclidean by default). Within each band one confusion
matrix per width is summed over the dataset with ``miou``'s code
(:class:`segbench.metrics.confusion.MeanIoU`). Definitions: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import numpy as np
import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor
from segbench.metrics.confusion import MeanIoU

DEFAULT_WIDTHS = (1, 3, 5, 10, 20, 40)
DISTANCES = ("euclidean", "chessboard", "taxicab")


def width_key(width: float) -> str:
    """``trimap_miou@w5`` for width 5 (``@w2.5`` for 2.5)."""
    return f"trimap_miou@w{width:g}"


def boundary_distance(gt: np.ndarray, ignore_index: int | None = 255, void_is_boundary: bool = True,
                      distance: str = "euclidean") -> np.ndarray:
    """Per pixel, the distance to the nearest pixel of another ground-truth label (float64 ``[H, W]``).

    ``inf`` for void pixels and for pixels whose label has no other label in
    the image. With ``void_is_boundary=False`` void pixels are not "another
    label" (distances are measured to the nearest other non-void label).
    """
    from scipy import ndimage

    out = np.full(gt.shape, np.inf)
    void = gt == ignore_index if ignore_index is not None else np.zeros(gt.shape, dtype=bool)
    for label in np.unique(gt[~void]):
        inside = gt == label
        other = ~inside if void_is_boundary else ~inside & ~void
        if not other.any():
            continue
        if distance == "euclidean":
            dist = ndimage.distance_transform_edt(~other)
        else:
            dist = ndimage.distance_transform_cdt(~other, metric=distance).astype(np.float64)
        out[inside] = dist[inside]
    return out


class TrimapIoU:
    """mIoU within ``widths`` px of the ground-truth boundaries: ``trimap_miou@wW`` per width, their mean ``trimap_miou``.

    DDP: the state is one int64 ``[len(widths), C, C]`` tensor of confusion
    matrices, summed across ranks.
    """

    name: ClassVar[str] = "trimap"
    state_reductions: ClassVar[dict[str, str]] = {"confmat": "sum"}

    def __init__(self, num_classes: int | None = None, ignore_index: int | None = 255,
                 widths: Sequence[float] = DEFAULT_WIDTHS, distance: str = "euclidean",
                 void_is_boundary: bool = True) -> None:
        if isinstance(widths, (int, float)) and not isinstance(widths, bool):
            widths = [widths]
        if (not isinstance(widths, (list, tuple)) or not widths
                or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 for w in widths)):
            raise ConfigError(f"metric 'trimap': widths must be a non-empty list of positive numbers, got {widths!r}")
        if len({width_key(w) for w in widths}) != len(widths):
            raise ConfigError(f"metric 'trimap': widths has duplicates: {list(widths)}")
        if distance not in DISTANCES:
            raise ConfigError(f"metric 'trimap': distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if not isinstance(void_is_boundary, bool):
            raise ConfigError(f"metric 'trimap': void_is_boundary must be true or false, got {void_is_boundary!r}")
        self.widths = [float(w) for w in widths]
        self.distance = distance
        self.void_is_boundary = void_is_boundary
        try:  # miou's checks of num_classes and ignore_index, under this metric's name
            self._bands = [MeanIoU(num_classes, ignore_index) for _ in self.widths]
        except ConfigError as exc:
            raise ConfigError(_renamed(exc)) from None
        self.num_classes, self.ignore_index = num_classes, ignore_index

    def reset(self) -> None:
        """Zero every width's confusion matrix."""
        for band in self._bands:
            band.reset()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``{"confmat": int64 [W, C, C]}`` (summed across ranks)."""
        return {"confmat": torch.stack([band.confmat.cpu() for band in self._bands])}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the confusion matrices (e.g. by their sum over ranks)."""
        confmat = state["confmat"]
        if confmat.dim() != 3 or confmat.shape[0] != len(self._bands):
            raise DataError(f"metric 'trimap': confmat of shape {tuple(confmat.shape)}, expected "
                            f"({len(self._bands)}, {self.num_classes}, {self.num_classes})")
        for band, matrix in zip(self._bands, confmat):
            band.load_state_tensors({"confmat": matrix})

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``mask`` [H, W] in each prediction and each target."""
        if len(predictions) != len(targets):
            raise DataError(f"metric 'trimap': {len(predictions)} predictions for {len(targets)} targets")
        for i, (p, t) in enumerate(zip(predictions, targets)):
            pred = get_tensor(p, "mask", "prediction", self.name).cpu()
            gt = get_tensor(t, "mask", "target", self.name).as_subclass(torch.Tensor).cpu()
            if pred.shape != gt.shape or gt.dim() != 2:
                raise DataError(f"metric 'trimap': predicted mask {i} has shape {tuple(pred.shape)} "
                                f"but the target mask has {tuple(gt.shape)}")
            if gt.is_floating_point() or gt.dtype == torch.bool:
                raise DataError(f"metric 'trimap': target masks must be integer class maps, got {gt.dtype}")
            dist = torch.from_numpy(boundary_distance(gt.numpy(), self.ignore_index, self.void_is_boundary,
                                                      self.distance))
            for width, band in zip(self.widths, self._bands):
                inside = dist <= width
                try:
                    band.update([{"mask": pred[inside]}], [{"mask": gt[inside]}])
                except DataError as exc:
                    raise DataError(_renamed(exc)) from None

    def compute(self) -> dict[str, float]:
        """``trimap_miou@wW`` per width and ``trimap_miou`` (their mean), fractions; NaN before any band pixel."""
        values = {width_key(w): band.compute()["miou"] for w, band in zip(self.widths, self._bands)}
        finite = [v for v in values.values() if v == v]
        mean = float(np.mean(finite)) if len(finite) == len(values) else float("nan")
        return {"trimap_miou": mean, **values}

    def per_class(self) -> dict[str, list[float]]:
        """IoU per class within each band, under ``trimap_miou@wW`` (NaN where a class is absent from the band)."""
        return {width_key(w): band.per_class()["miou"] for w, band in zip(self.widths, self._bands)}


def _renamed(exc: Exception) -> str:
    return str(exc).replace("metric 'miou'", "metric 'trimap'")
