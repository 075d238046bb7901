"""What ``max_box_acc``, ``pxap`` and ``pointing_game`` share: checked class maps, samples, normalisation.

A *sample* is one (image, present class) pair: on single-label data one per
image, on multi-label data one per class in the image. The class's score map
is normalised per sample as wsolevaluation's ``normalize_scoremap``
(``inference.py:38-52``): ``m - min``, divided by its maximum, in float32; a
constant map becomes zeros. A map with NaN or infinity is a ``DataError``
(the reference silently zeroes NaN maps).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from segbench.errors import ConfigError, DataError
from segbench.metrics.average_precision import get_tensor
from segbench.metrics.pointing import image_size_of


def check_interval(value: object, metric: str, option: str) -> np.ndarray:
    """The threshold grid ``np.arange(0, 1, value)`` (wsolevaluation ``evaluation.py:468``) for ``0 < value < 1``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"metric '{metric}': {option} must be a number in (0, 1) (the threshold step), got {value!r}")
    return np.arange(0, 1, float(value))


def check_fraction(value: object, metric: str, option: str) -> float | None:
    """``value`` as a float in [0, 1], or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"metric '{metric}': {option} must be a number in [0, 1] or none, got {value!r}")
    return float(value)


def check_classes(num_classes: object, background: object, metric: str) -> None:
    """``num_classes`` a positive int or None, ``background`` an int or None."""
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ConfigError(f"metric '{metric}': num_classes must be a positive integer, got {num_classes!r}")
    if background is not None and (isinstance(background, bool) or not isinstance(background, int)):
        raise ConfigError(f"metric '{metric}': background must be an integer or None, got {background!r}")


def class_maps(predictions: Sequence[dict], targets: Sequence[dict], metric: str,
               num_classes: int | None) -> list[torch.Tensor]:
    """Each prediction's ``score_maps`` ``[C, H, W]`` (float32, CPU), checked against its target's image size."""
    if len(predictions) != len(targets):
        raise DataError(f"metric '{metric}': {len(predictions)} predictions for {len(targets)} targets")
    maps = []
    for i, (p, t) in enumerate(zip(predictions, targets)):
        m = get_tensor(p, "score_maps", "prediction", metric).cpu().as_subclass(torch.Tensor).float()
        if m.dim() != 3 or m.shape[1] == 0 or m.shape[2] == 0:
            raise DataError(f"metric '{metric}': score_maps must be [C, H, W], got shape {tuple(m.shape)}")
        size = image_size_of(t)
        if size is not None and tuple(m.shape[1:]) != size:
            raise DataError(f"metric '{metric}': score_maps of image {i} are {tuple(m.shape[1:])} but the image is "
                            f"{size}; resize them to the image size first (the engine does)")
        if num_classes is not None and m.shape[0] != num_classes:
            raise DataError(f"metric '{metric}': expected {num_classes} score maps, got {m.shape[0]}")
        maps.append(m)
    return maps


def box_classes(target: dict, metric: str, num_classes: int, background: int | None) -> list[int]:
    """The classes of the target's boxes, sorted, without the background and the classes present only as
    "difficult" (``labels_ignore``)."""
    classes = get_tensor(target, "classes", "target", metric).cpu().reshape(-1).to(torch.int64)
    if classes.numel() and (classes.min() < 0 or classes.max() >= num_classes):
        bad = classes[(classes < 0) | (classes >= num_classes)][0].item()
        raise DataError(f"metric '{metric}': box class {bad} is outside 0..{num_classes - 1}")
    ignore = target.get("labels_ignore")
    ignored = set() if ignore is None else set(torch.as_tensor(ignore).reshape(-1).nonzero().flatten().tolist())
    return [c for c in sorted(set(classes.tolist())) if c != background and c not in ignored]


def target_boxes(target: dict, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """``boxes`` float64 ``[N, 4]`` XYXY and ``classes`` int64 ``[N]`` of a target."""
    boxes = get_tensor(target, "boxes", "target", metric).cpu().as_subclass(torch.Tensor).to(torch.float64)
    classes = get_tensor(target, "classes", "target", metric).cpu().reshape(-1).to(torch.int64)
    if boxes.numel() == 0 and classes.numel() == 0:
        return np.zeros((0, 4)), np.zeros(0, dtype=np.int64)
    if boxes.dim() != 2 or boxes.shape[1] != 4 or boxes.shape[0] != classes.numel():
        raise DataError(f"metric '{metric}': a target has boxes of shape {tuple(boxes.shape)} and "
                        f"{classes.numel()} classes; expected [N, 4] and [N]")
    return boxes.numpy(), classes.numpy()


def normalise(score_map: torch.Tensor, metric: str) -> np.ndarray:
    """One class map min-max normalised to [0, 1] in float32 as wsolevaluation does; constant -> zeros."""
    m = score_map.numpy().astype(np.float32, copy=True)
    if not np.isfinite(m).all():
        raise DataError(f"metric '{metric}': score_maps contain NaN or infinity")
    m -= m.min()
    top = m.max()
    if top == 0:
        return np.zeros_like(m)
    m /= top
    return m


def quantise(normalised: np.ndarray) -> np.ndarray:
    """``(map * 255).astype(uint8)`` as wsolevaluation's ``compute_bboxes_from_scoremaps`` (``evaluation.py:132``)."""
    return (normalised * np.float32(255)).astype(np.uint8)
