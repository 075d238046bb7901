"""``accuracy``: single-label classification accuracy and mean per-class accuracy (MIT67, 15-Scene).

The predicted class is the argmax of the image-level ``scores`` (the first
maximum on ties; the background class, when the dataset has one, is never
predicted); the true class is the one class with ``labels[c] == 1``.

- ``accuracy``: the fraction of images whose predicted class is the true one
  (``sklearn.metrics.accuracy_score``);
- ``mean_class_accuracy``: the mean over classes with at least one image of
  the fraction of that class's images predicted correctly, i.e. the mean of
  the per-class recalls (``sklearn.metrics.balanced_accuracy_score``), as
  reported for 15-Scene and MIT67 (WELDON, Durand et al. 2016).

The metric is defined for single-label data only. Option ``single_label``
(datasets set it in their ``metric_defaults``): ``True`` (MIT67, 15-Scene)
makes an image without exactly one positive label a :class:`DataError`;
``False`` (VOC, COCO) makes the metric report nothing; ``None`` decides from
the data: when any image has not exactly one positive label, ``compute()``
and ``per_class()`` return nothing. So multi-label runs carry no accuracy.
The state is one int64 confusion matrix plus a count of multi-label images,
both summed across ranks.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor, nanmean, stack_rows


class Accuracy:
    """Top-1 accuracy and mean per-class accuracy of ``scores`` against one-hot ``labels``."""

    name: ClassVar[str] = "accuracy"
    state_reductions: ClassVar[dict[str, str]] = {"confmat": "sum", "multi_label": "sum"}

    def __init__(self, num_classes: int | None = None, background: int | None = None,
                 single_label: bool | None = None) -> None:
        if single_label not in (None, True, False):
            raise ConfigError(f"metric 'accuracy': single_label must be true, false or none, got {single_label!r}")
        self.single_label = single_label
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ConfigError(f"metric 'accuracy': num_classes must be a positive integer, got {num_classes!r}")
        if background is not None and (isinstance(background, bool) or not isinstance(background, int)):
            raise ConfigError(f"metric 'accuracy': background must be an integer or None, got {background!r}")
        self.num_classes = num_classes
        self.background = background
        self.reset()

    def reset(self) -> None:
        """Forget every image seen."""
        c = self.num_classes or 0
        self.confmat = torch.zeros((c, c), dtype=torch.int64)
        self.multi_label = torch.zeros((), dtype=torch.int64)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """``confmat`` int64 ``[C, C]`` (true class x predicted class) and ``multi_label`` (a count)."""
        return {"confmat": self.confmat, "multi_label": self.multi_label}

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state (e.g. by its sum over ranks)."""
        confmat = state["confmat"].to(torch.int64)
        if confmat.dim() != 2 or confmat.shape[0] != confmat.shape[1]:
            raise DataError(f"metric 'accuracy': confmat of shape {tuple(confmat.shape)} is not square")
        self._set_num_classes(confmat.shape[0])
        self.confmat = confmat
        self.multi_label = state["multi_label"].to(torch.int64).reshape(())

    def _set_num_classes(self, c: int) -> None:
        if self.num_classes is None:
            self.num_classes = c
            self.confmat = torch.zeros((c, c), dtype=torch.int64)
        elif self.num_classes != c:
            raise DataError(f"metric 'accuracy': expected {self.num_classes} classes, got {c}")
        if self.background is not None and not 0 <= self.background < c:
            raise ConfigError(f"metric 'accuracy': background {self.background} is not a class index (0..{c - 1})")

    def update(self, predictions: list[dict], targets: list[dict]) -> None:
        """Add a batch: ``scores`` [C] per prediction, one-hot ``labels`` [C] per target."""
        if len(predictions) != len(targets):
            raise DataError(f"metric 'accuracy': {len(predictions)} predictions for {len(targets)} targets")
        if not predictions or self.single_label is False:
            return
        scores = stack_rows([get_tensor(p, "scores", "prediction", self.name) for p in predictions],
                            "scores", self.name).to("cpu", torch.float64)
        labels = stack_rows([get_tensor(t, "labels", "target", self.name) for t in targets],
                            "labels", self.name).to("cpu")
        if scores.shape != labels.shape:
            raise DataError(f"metric 'accuracy': scores have {scores.shape[1]} classes but labels have "
                            f"{labels.shape[1]}")
        c = scores.shape[1]
        self._set_num_classes(c)
        if torch.isnan(scores).any():
            raise DataError("metric 'accuracy': prediction scores contain NaN")
        positive = labels > 0.5
        single = positive.sum(1) == 1
        if self.single_label and not single.all():
            i = int((~single).nonzero()[0])
            raise DataError(f"metric 'accuracy': target {i} of the batch has {int(positive[i].sum())} positive "
                            f"labels; accuracy needs exactly one (single_label=True)")
        self.multi_label += int((~single).sum())
        if not single.any():
            return
        truth = positive[single].to(torch.int64).argmax(1)
        scores = scores[single]
        if self.background is not None:
            scores[:, self.background] = float("-inf")
        predicted = scores.argmax(1)  # the first maximum on ties
        self.confmat += torch.bincount(truth * c + predicted, minlength=c * c).view(c, c)

    def _recall(self) -> torch.Tensor:
        cm = self.confmat.to(torch.float64)
        recall = cm.diagonal() / cm.sum(1)  # NaN for classes without an image
        if self.background is not None and recall.numel():
            recall[self.background] = float("nan")
        return recall

    def _defined(self) -> bool:
        return self.single_label is not False and int(self.multi_label) == 0

    def compute(self) -> dict[str, float]:
        """``accuracy`` and ``mean_class_accuracy`` (fractions; NaN before any image); empty for multi-label data."""
        if not self._defined():
            return {}
        total = self.confmat.sum()
        accuracy = int(self.confmat.diagonal().sum()) / int(total) if total > 0 else float("nan")
        return {"accuracy": accuracy, "mean_class_accuracy": nanmean(self._recall())}

    def per_class(self) -> dict[str, list[float]]:
        """``{"class_accuracy": [recall per class]}``, NaN for classes without an image; empty for multi-label data."""
        if not self._defined():
            return {}
        return {"class_accuracy": self._recall().tolist()}
