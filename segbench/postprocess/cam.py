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
"""

from __future__ import annotations

from typing import Any

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


def cam_mask_scores(score_maps: torch.Tensor, scores: torch.Tensor | None, *, background: int | None = 0,
                    bg_threshold: float = 0.5, score_threshold: float = 0.0,
                    classes: str = "predicted") -> torch.Tensor:
    """``[C, H, W]`` maps (+ ``[C]`` scores) -> ``[C, H, W]`` normalised scores whose argmax is the label map."""
    maps = score_maps.float()
    c = maps.shape[0]
    foreground = torch.ones(c, dtype=torch.bool)
    if background is not None:
        foreground[background] = False
    if classes == "all" or scores is None:
        keep = foreground.clone()
    else:
        scores = scores.float().flatten()
        keep = foreground & (scores >= score_threshold)
        if not keep.any() and foreground.any():
            masked = scores.masked_fill(~foreground, float("-inf"))
            keep[int(masked.argmax())] = True
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = (flat.max(1).values[:, None, None] - low)
    normalised = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    out = torch.where(keep[:, None, None], normalised, torch.zeros_like(maps))
    if background is not None:
        out[background] = float(bg_threshold)
    return out


def cam_to_mask(score_maps: torch.Tensor, scores: torch.Tensor | None, **options: Any) -> torch.Tensor:
    """The label map ``[H, W]`` (int64) of the class-map rule (options as :func:`cam_mask_scores`)."""
    return cam_mask_scores(score_maps, scores, **options).argmax(0)


class CamMask:
    """Post-processor: adds ``mask`` (and ``mask_scores``) to a prediction that has ``score_maps``."""

    def __init__(self, bg_threshold: float = 0.5, score_threshold: float = 0.0, classes: str = "predicted",
                 num_classes: int = 0, background: int | None = 0) -> None:
        check_cam_options(bg_threshold, score_threshold, classes)
        self.options = {"bg_threshold": float(bg_threshold), "score_threshold": float(score_threshold),
                        "classes": classes, "background": background}

    def __call__(self, image: Any, prediction: dict) -> dict:
        if "score_maps" not in prediction:
            return prediction
        scores = cam_mask_scores(prediction["score_maps"], prediction.get("scores"), **self.options)
        return {**prediction, "mask": scores.argmax(0), "mask_scores": scores}
