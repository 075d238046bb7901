"""Test-time augmentation for every method: multi-scale and flipped inputs, sliding windows.

Two training-config fields (:class:`segbench.engine.config.TrainConfig`) say what evaluation does:

- ``tta``: ``""`` (none), ``"flip"``, ``"ms:0.5,0.75,1.0"`` or ``"ms:0.5,0.75,1.0+flip"``. For each scale (and
  its left-right flip) the normalised batch is resized (bilinear, ``round(s * H) x round(s * W)``,
  :func:`segbench.nn.multiscale.rescale_images`), ``model.predict`` runs on it, its ``score_maps`` are flipped
  back and resized (bilinear) to the input size, and the maps of every view are averaged; image-level ``scores``
  are averaged too. Where the method also returns a label ``mask``, the augmented mask is the argmax of the
  averaged maps.
- ``slide``: ``""`` or ``"SIZE,STRIDE"``: mmsegmentation's ``slide`` inference. Windows of ``SIZE x SIZE`` every
  ``STRIDE`` pixels, the last one along each axis moved back inside the image; an image smaller than ``SIZE``
  is padded bottom and right with 0 (the mean colour, as batches are) up to a window. Each window's score maps
  are resized to the window, pasted into an accumulator at the input size, and divided by a count map of the
  windows covering each pixel; image ``scores`` are the mean over the windows. With ``tta`` too, every
  augmented view is predicted window by window.

Averaging needs score maps: a method that predicts ``instances`` (boxes cannot be averaged pixel-wise), or only
a label map, is refused with a one-line :class:`ConfigError` (:func:`check_method`). At ``""`` both fields
leave evaluation exactly as without them (``model.predict`` is called once on the batch as it is).

Nothing here imports torch at module level: :mod:`segbench.engine.config` validates the fields through it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from segbench.errors import ConfigError, DataError

__all__ = ["TestTime", "average_views", "check_method", "class_argmax", "parse_slide", "parse_tta", "slide_predict",
           "tta_label"]


def parse_tta(text: Any) -> tuple[tuple[float, ...], bool]:
    """``(scales, flip)`` of a ``tta`` value: ``""`` -> ``((1.0,), False)``, ``"ms:0.5,1+flip"`` ->
    ``((0.5, 1.0), True)``; a one-line ConfigError for anything else."""
    text = "" if text is None else text
    if not isinstance(text, str):
        raise ConfigError(f"tta must be '', 'flip', 'ms:S1,S2,...' or 'ms:S1,S2,...+flip', got {text!r}")
    scales, flip = (1.0,), False
    parts = [p.strip() for p in text.split("+")] if text.strip() else []
    kinds = [("ms" if p.startswith("ms:") else p) for p in parts]
    if any(k not in ("flip", "ms") for k in kinds) or len(set(kinds)) != len(kinds):
        raise ConfigError(f"tta must be '', 'flip', 'ms:S1,S2,...' or 'ms:S1,S2,...+flip', got {text!r}")
    for part in parts:
        if part == "flip":
            flip = True
            continue
        values = []
        for item in part[3:].split(","):
            try:
                value = float(item)
            except ValueError:
                value = math.nan
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"tta {text!r}: scale {item.strip()!r} is not a positive number")
            values.append(value)
        if len(set(values)) != len(values):
            raise ConfigError(f"tta {text!r}: a scale appears twice")
        scales = tuple(values)
    return scales, flip


def parse_slide(text: Any) -> tuple[int, int] | None:
    """``(size, stride)`` of a ``slide`` value ``"SIZE,STRIDE"`` (``None`` for ``""``); a one-line ConfigError
    unless both are positive integers with ``stride <= size``."""
    if text is None or text == "":
        return None
    items = text if isinstance(text, (list, tuple)) else str(text).split(",")
    try:
        size, stride = (int(str(v).strip()) for v in items)
        exact = all(float(str(v).strip()) == int(str(v).strip()) for v in items)
    except ValueError:
        exact = False
    if not exact or isinstance(text, bool):
        raise ConfigError(f"slide must be 'SIZE,STRIDE' (two integers, e.g. 512,341) or '', got {text!r}")
    if size < 1 or stride < 1:
        raise ConfigError(f"slide {text!r}: window size and stride must be at least 1")
    if stride > size:
        raise ConfigError(f"slide {text!r}: stride {stride} > window size {size} would leave pixels unseen")
    return size, stride


def tta_label(tta: str = "", slide: str = "") -> str:
    """A short tag for tables: ``"ms 0.5-1.75, flip"``, ``"flip"``, ``"slide 512/341"``; ``""`` when neutral."""
    scales, flip = parse_tta(tta)
    window = parse_slide(slide)
    parts = []
    if scales != (1.0,):
        parts.append(f"ms {min(scales):g}-{max(scales):g}" if len(scales) > 1 else f"ms {scales[0]:g}")
    if flip:
        parts.append("flip")
    if window:
        parts.append(f"slide {window[0]}/{window[1]}")
    return ", ".join(parts)


def check_method(method: Any, tta: str = "", slide: str = "") -> None:
    """A one-line ConfigError when ``tta`` or ``slide`` is set and the method's outputs (:class:`MethodSpec`)
    cannot be averaged: instances, or no score maps."""
    if TestTime.parse(tta, slide).neutral:
        return
    outputs = ", ".join(sorted(method.outputs))
    if "instances" in method.outputs:
        raise ConfigError(f"tta/slide: method '{method.name}' predicts instances ({outputs}), which test-time "
                          "augmentation cannot average; leave tta and slide empty")
    if "score_maps" not in method.outputs:
        raise ConfigError(f"tta/slide: method '{method.name}' gives no score maps ({outputs}); test-time "
                          "augmentation averages score maps")


@dataclass(frozen=True)
class TestTime:
    """The parsed ``tta`` and ``slide`` of a config; :meth:`predict` wraps a method's ``predict``."""

    __test__ = False  # not a pytest class

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    window: tuple[int, int] | None = None

    @classmethod
    def parse(cls, tta: Any = "", slide: Any = "") -> "TestTime":
        scales, flip = parse_tta(tta)
        return cls(scales, flip, parse_slide(slide))

    @property
    def neutral(self) -> bool:
        """True when evaluation is the plain pass."""
        return self.scales == (1.0,) and not self.flip and self.window is None

    def predict(self, predict: Callable[[Any], list[dict]], inputs: Any) -> list[dict]:
        """``predict(inputs)`` augmented: the plain call when neutral, else the averaged predictions per image
        (``score_maps`` ``[C, H, W]`` at the input size, ``scores``, ``mask`` where the method gives one)."""
        if self.neutral:
            return predict(inputs)
        run = predict  # every view window by window when sliding
        if self.window is not None:
            run = functools.partial(slide_predict, predict, size=self.window[0], stride=self.window[1])
        if self.scales == (1.0,) and not self.flip:
            return run(inputs)
        return _averaged(run, inputs, self.scales, self.flip)


def average_views(maps_fn: Callable[[Any], Any], images: Any, scales: Sequence[float] = (1.0,), flip: bool = False,
                  size: Sequence[int] | None = None, post: Callable[[Any], Any] | None = None) -> Any:
    """The mean over ``scales`` (and their left-right flips) of ``maps_fn``'s maps at ``size``: ``[B, C, *size]``.

    ``maps_fn`` maps a batch ``[B, 3, h, w]`` to maps ``[B, C, h', w']`` (any resolution). Each view's maps are
    flipped back, resized (bilinear, ``align_corners=False``) to ``size`` (default: the input size), passed
    through ``post`` (e.g. a softmax) and summed in float32; the sum is divided by the number of views.
    DeepLab's ``multiscale_probabilities`` is this with ``post`` the softmax over classes.
    """
    from segbench.nn.multiscale import check_scales, rescale_images, resize_maps

    size = tuple(images.shape[-2:]) if size is None else tuple(size)
    total, count = None, 0
    for scale in check_scales(scales):
        x = rescale_images(images, scale)
        for view, flipped in ([(x, False), (x.flip(-1), True)] if flip else [(x, False)]):
            maps = maps_fn(view).float()
            if flipped:
                maps = maps.flip(-1)
            maps = resize_maps(maps, size)
            if post is not None:
                maps = post(maps)
            total = maps if total is None else total + maps
            count += 1
    return total / count


def _averaged(run: Callable[[Any], list[dict]], inputs: Any, scales: Sequence[float], flip: bool) -> list[dict]:
    """Per image: score maps averaged over the views (:func:`average_views`), scores averaged, mask = argmax."""
    import torch

    scores: list[Any] = []
    has_mask: list[bool] = []

    def maps_of(view):
        outputs = run(view)
        has_mask.append(all("mask" in o for o in outputs))
        if all("scores" in o for o in outputs):
            scores.append(torch.stack([o["scores"].float() for o in outputs]))
        return _stacked_maps(outputs)

    maps = average_views(maps_of, inputs, scales, flip)
    mean_scores = torch.stack(scores).mean(0) if len(scores) == len(has_mask) else None
    return _per_image(maps, mean_scores, all(has_mask))


def slide_predict(predict: Callable[[Any], list[dict]], images: Any, size: int, stride: int) -> list[dict]:
    """mmsegmentation's ``slide`` inference of a batch ``[B, 3, H, W]`` (see the module docstring)."""
    import torch
    import torch.nn.functional as F

    from segbench.nn.multiscale import resize_maps

    height, width = images.shape[-2:]
    total = count = None
    scores: list[Any] = []
    has_mask = True
    for top in _starts(height, size, stride):
        for left in _starts(width, size, stride):
            crop = images[..., top:top + size, left:left + size]
            h, w = crop.shape[-2:]
            if h < size or w < size:  # an image smaller than the window: padded with the mean colour
                crop = F.pad(crop, (0, size - w, 0, size - h))
            outputs = predict(crop)
            has_mask = has_mask and all("mask" in o for o in outputs)
            if all("scores" in o for o in outputs):
                scores.append(torch.stack([o["scores"].float() for o in outputs]))
            maps = resize_maps(_stacked_maps(outputs).float(), crop.shape[-2:])[..., :h, :w]
            if total is None:
                total = maps.new_zeros((*maps.shape[:2], height, width))
                count = maps.new_zeros((height, width))
            total[..., top:top + h, left:left + w] += maps
            count[top:top + h, left:left + w] += 1
    windows = len(_starts(height, size, stride)) * len(_starts(width, size, stride))
    mean_scores = torch.stack(scores).mean(0) if len(scores) == windows else None
    return _per_image(total / count, mean_scores, has_mask)


def _starts(length: int, size: int, stride: int) -> list[int]:
    """mmsegmentation's window starts along an axis: every ``stride``, the last moved back to end at ``length``."""
    grids = max(length - size + stride - 1, 0) // stride + 1
    return [max(min(k * stride + size, length) - size, 0) for k in range(grids)]


def _stacked_maps(outputs: list[dict]) -> Any:
    import torch

    if not outputs or any("score_maps" not in o for o in outputs):
        keys = sorted(outputs[0]) if outputs else []
        raise DataError(f"test-time augmentation needs score_maps in every prediction; got keys {keys}")
    return torch.stack([o["score_maps"] for o in outputs])


def class_argmax(maps: Any) -> Any:
    """``maps.argmax(dim=-3)`` (the class of ``[..., C, H, W]`` maps), the same values, faster on the CPU.

    torch's CPU argmax over a strided class axis costs about 45 ms per 7 x 375 x 500 map; a running maximum
    over the classes (the first class wins ties, as argmax) costs a fifth of it. Maps with NaN go to argmax.
    """
    import torch

    if maps.shape[-3] == 1 or maps.device.type != "cpu" or torch.isnan(maps).any():
        return maps.argmax(dim=-3)
    best = maps.select(-3, 0).clone()
    index = torch.zeros(best.shape, dtype=torch.int64, device=maps.device)
    for c in range(1, maps.shape[-3]):
        current = maps.select(-3, c)
        index.masked_fill_(current > best, c)
        torch.maximum(best, current, out=best)
    return index


def _per_image(maps: Any, scores: Any, mask: bool) -> list[dict]:
    masks = class_argmax(maps) if mask else None
    out = []
    for i in range(maps.shape[0]):
        prediction = {"score_maps": maps[i]}
        if scores is not None:
            prediction["scores"] = scores[i]
        if masks is not None:
            prediction["mask"] = masks[i]
        out.append(prediction)
    return out
