"""The class-map rule: turn image-supervised class score maps into a label map (see ``docs/postprocess.md``).

For one image with class score maps ``S`` ``[C, H, W]`` (at the original
size) and image scores ``s`` ``[C]``:

1. Kept classes: every foreground class ``c`` with ``s[c] >= score_threshold``;
   when none passes, the single highest-scoring foreground class
   (``classes="all"`` keeps every foreground class).
2. Each kept class's map is min-max normalised over the image:
   ``N_c = (S_c - min S_c) / (max S_c - min S_c)`` (0 where the map is flat).
3. The background class (when the dataset has one) gets the constant map
   ``bg_threshold``; classes not kept get 0 and are never chosen.
4. ``mask = argmax_c N_c``, ties to the lower index (so to background, index 0
   on VOC-like datasets, at exactly the threshold).

The normalised maps are returned too, as ``mask_scores``, for a dense CRF.

Only the kept classes and the background are computed at full resolution
(the *candidates*, :func:`candidate_maps`): the argmax over them, with the
0 of the classes not kept where no candidate is above 0, is the argmax over
all ``C`` maps, bit for bit. The ``[C, H, W]`` ``mask_scores`` are written
only when asked for (:func:`dense_scores`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from segbench.errors import ConfigError

CLASS_CHOICES = ("predicted", "all")


def check_cam_options(bg_threshold: float, score_threshold: float, classes: str) -> None:
    """Raise ``ConfigError`` naming the option when one is out of range."""
    if not 0.0 <= float(bg_threshold) <= 1.0:
        raise ConfigError(f"cam_mask: bg_threshold must be in [0, 1], got {bg_threshold!r}")
    if classes not in CLASS_CHOICES:
        raise ConfigError(f"cam_mask: classes must be one of {', '.join(CLASS_CHOICES)}, got {classes!r}")
    if isinstance(score_threshold, bool) or not isinstance(score_threshold, (int, float)):
        raise ConfigError(f"cam_mask: score_threshold must be a number, got {score_threshold!r}")


def kept_classes(scores: torch.Tensor | None, num_classes: int, *, background: int | None = 0,
                 score_threshold: float = 0.0, classes: str = "predicted") -> torch.Tensor:
    """Step 1: the indices (int64, ascending) of the foreground classes the rule keeps."""
    foreground = torch.ones(num_classes, dtype=torch.bool)
    if background is not None:
        foreground[background] = False
    if classes == "all" or scores is None:
        keep = foreground
    else:
        scores = scores.float().flatten()
        keep = foreground & (scores >= score_threshold)
        if not keep.any() and foreground.any():
            masked = scores.masked_fill(~foreground, float("-inf"))
            keep[int(masked.argmax())] = True
    return keep.nonzero().flatten().cpu()


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """Step 2: each ``[K, H, W]`` map min-max normalised over the image (0 where it is flat)."""
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = flat.max(1).values[:, None, None] - low
    return torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))


def candidate_maps(kept: torch.Tensor, normalised: torch.Tensor, num_classes: int, background: int | None,
                   bg_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 3: the candidate classes (kept + background, ascending) and their ``[K, H, W]`` maps."""
    if background is None:
        return kept, normalised
    bg = range(num_classes)[background]
    at = int((kept < bg).sum())
    bg_map = normalised.new_full((1, *normalised.shape[1:]), float(bg_threshold))
    classes = torch.cat([kept[:at], torch.tensor([bg]), kept[at:]])
    return classes, torch.cat([normalised[:at], bg_map, normalised[at:]])


def label_map(classes: torch.Tensor, maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Step 4: ``argmax`` over all ``num_classes`` maps (the absent ones 0), from the candidates alone.

    Ties go to the lower class index. Where the best candidate is 0, a class
    that is not a candidate (map 0) with a lower index wins, as in the dense
    argmax; where every candidate is below 0, the first such class does.
    """
    value, index = maps.max(0)
    mask = classes.to(index.device)[index]
    absent = torch.ones(num_classes, dtype=torch.bool)
    absent[classes] = False
    if absent.any():
        first = int(absent.nonzero()[0])
        low = value <= 0
        if low.any():
            mask = torch.where(low, torch.where(value < 0, first, mask.clamp_max(first)), mask)
    return mask


def dense_scores(classes: torch.Tensor, maps: torch.Tensor, num_classes: int) -> torch.Tensor:
    """The ``[C, H, W]`` scores of the rule (``mask_scores``): the candidates' maps, 0 for the other classes."""
    out = maps.new_zeros((num_classes, *maps.shape[1:]))
    out[classes.to(out.device)] = maps
    return out


def cam_candidates(score_maps: torch.Tensor, scores: torch.Tensor | None, *, background: int | None = 0,
                   bg_threshold: float = 0.5, score_threshold: float = 0.0,
                   classes: str = "predicted") -> tuple[torch.Tensor, torch.Tensor]:
    """``[C, H, W]`` maps (+ ``[C]`` scores) -> the candidate classes and their maps (steps 1-3)."""
    c = score_maps.shape[0]
    kept = kept_classes(scores, c, background=background, score_threshold=score_threshold, classes=classes)
    normalised = normalise_maps(score_maps[kept.to(score_maps.device)].float())
    return candidate_maps(kept, normalised, c, background, bg_threshold)


def cam_mask_scores(score_maps: torch.Tensor, scores: torch.Tensor | None, **options: Any) -> torch.Tensor:
    """``[C, H, W]`` maps (+ ``[C]`` scores) -> ``[C, H, W]`` normalised scores whose argmax is the label map.

    ``options``: ``background`` (index or None, default 0), ``bg_threshold``
    (0.5), ``score_threshold`` (0.0), ``classes`` (``predicted`` | ``all``).
    """
    return dense_scores(*cam_candidates(score_maps, scores, **options), score_maps.shape[0])


def cam_to_mask(score_maps: torch.Tensor, scores: torch.Tensor | None, **options: Any) -> torch.Tensor:
    """The label map ``[H, W]`` (int64) of the class-map rule (options as :func:`cam_mask_scores`)."""
    return label_map(*cam_candidates(score_maps, scores, **options), score_maps.shape[0])


class CamMask:
    """Post-processor: adds ``mask`` (and ``mask_scores``) to a prediction that has ``score_maps``.

    ``lazy_score_maps``: the engine may call it with ``score_maps`` still at
    the network's size and ``size`` = (H, W), the original size; it then
    resizes the kept classes' maps only. With ``mask_scores=False`` (nothing
    after it reads them) it writes no ``[C, H, W]`` scores.
    """

    lazy_score_maps: ClassVar[bool] = True

    def __init__(self, bg_threshold: float = 0.5, score_threshold: float = 0.0, classes: str = "predicted",
                 num_classes: int = 0, background: int | None = 0) -> None:
        check_cam_options(bg_threshold, score_threshold, classes)
        self.options = {"bg_threshold": float(bg_threshold), "score_threshold": float(score_threshold),
                        "classes": classes, "background": background}

    def __call__(self, image: Any, prediction: dict, *, size: tuple[int, int] | None = None,
                 mask_scores: bool = True) -> dict:
        if "score_maps" not in prediction:
            return prediction
        maps = prediction["score_maps"]
        c = maps.shape[0]
        background = self.options["background"]
        kept = kept_classes(prediction.get("scores"), c, background=background,
                            score_threshold=self.options["score_threshold"], classes=self.options["classes"])
        if size is None:
            kept_maps = maps[kept.to(maps.device)].float()
        else:
            from segbench.engine.evaluate import resize_score_maps

            kept_maps = resize_score_maps(maps, size, kept)
        classes, candidates = candidate_maps(kept, normalise_maps(kept_maps), c, background,
                                             self.options["bg_threshold"])
        out = {**prediction, "mask": label_map(classes, candidates, c)}
        if mask_scores:
            out["mask_scores"] = dense_scores(classes, candidates, c)
        return out
