"""The dense CRF post-processor: per-pixel probabilities + the RGB image -> refined label map.

Energy (Kraehenbuehl & Koltun 2011; DeepLab's Eq. 1-2), Potts compatibility:

    E(x) = sum_i -log P_i(x_i)
         + sum_{i<j} [x_i != x_j] ( w1 exp(-|p_i-p_j|^2 / 2 theta_alpha^2 - |I_i-I_j|^2 / 2 theta_beta^2)
                                  + w2 exp(-|p_i-p_j|^2 / 2 theta_gamma^2) )

minimised approximately by ``iterations`` steps of mean field with the
permutohedral-lattice filtering of the original C++ code (``pydensecrf2``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from segbench.errors import ConfigError, DataError

UNARY_CHOICES = ("auto", "softmax", "probs", "scores")
_WEIGHTS = ("bilateral_weight", "gaussian_weight")
_THETAS = ("theta_alpha", "theta_beta", "theta_gamma")
_SUM_TOLERANCE = 1e-3  # score maps whose per-pixel sums are within this of 1 are taken as probabilities


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ConfigError(f"densecrf: {name} must be a number, got {value!r}")
    return float(value)


def check_options(iterations: Any, unary: Any, floor: Any, **params: Any) -> None:
    """Raise a one-line ``ConfigError`` naming the first option out of range."""
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"densecrf: iterations must be an integer >= 1, got {iterations!r}")
    for name in _WEIGHTS:
        if _number(name, params[name]) < 0:
            raise ConfigError(f"densecrf: {name} must be >= 0, got {params[name]!r}")
    for name in _THETAS:
        if _number(name, params[name]) <= 0:
            raise ConfigError(f"densecrf: {name} must be > 0, got {params[name]!r}")
    if unary not in UNARY_CHOICES:
        raise ConfigError(f"densecrf: unary must be one of {', '.join(UNARY_CHOICES)}, got {unary!r}")
    if not 0 < _number("floor", floor) < 1:
        raise ConfigError(f"densecrf: floor must be in (0, 1), got {floor!r}")


def load_pydensecrf():
    """``pydensecrf.densecrf``, or a one-line ``ConfigError`` saying how to install it."""
    try:
        import pydensecrf.densecrf as dcrf
    except ImportError as exc:
        raise ConfigError(f"densecrf: the compiled CRF is not installed ({exc}), the extra segbench[crf]: "
                          "pip install 'segbench[crf]' (or pip install pydensecrf2)") from None
    return dcrf


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Non-negative ``[C, H, W]`` scores -> per-pixel distributions (uniform where a pixel's scores sum to 0)."""
    maps = maps.float().clamp_min(0)
    total = maps.sum(0, keepdim=True)
    uniform = torch.full_like(maps, 1.0 / maps.shape[0])
    return torch.where(total > 0, maps / total.clamp_min(torch.finfo(torch.float32).tiny), uniform)


def is_distribution(maps: torch.Tensor) -> bool:
    """True when every pixel's scores are non-negative and sum to 1 (a softmax output, resized bilinearly)."""
    return bool(maps.min() >= 0) and bool(((maps.sum(0) - 1).abs() <= _SUM_TOLERANCE).all())


def choose_unary(prediction: dict, unary: str, supervision: str | None) -> str:
    """The unary source for this prediction (``auto`` resolved); a ``DataError`` when its input is missing.

    ``auto``: ``scores`` when the prediction has ``mask_scores`` (the class-map
    rule ran), else ``probs`` when ``score_maps`` already are per-pixel
    distributions, else (image-supervised class maps are not probabilities)
    an error, else ``probs`` for non-negative maps and ``softmax`` for logits.
    """
    if unary == "auto":
        if "mask_scores" in prediction:
            return "scores"
        if "score_maps" not in prediction:
            raise DataError(f"densecrf: the prediction has neither mask_scores nor score_maps; keys {sorted(prediction)}")
        maps = prediction["score_maps"]
        if is_distribution(maps):
            return "probs"
        if supervision == "image":
            raise DataError("densecrf: the class maps of an image-supervised method are not probabilities and the "
                            "prediction has no mask_scores; apply cam_mask before densecrf")
        return "probs" if bool(maps.min() >= 0) else "softmax"
    key = "mask_scores" if unary == "scores" else "score_maps"
    if key not in prediction:
        raise DataError(f"densecrf: unary={unary} needs '{key}' in the prediction; keys {sorted(prediction)}")
    return unary


def probabilities(prediction: dict, unary: str) -> torch.Tensor:
    """``[C, H, W]`` per-pixel probabilities P from a resolved unary source."""
    if unary == "scores":
        return normalise(prediction["mask_scores"])
    maps = prediction["score_maps"].float()
    return maps.softmax(0) if unary == "softmax" else normalise(maps)


def image_hwc(image: Any, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[3, H, W]`` tensor -> C-contiguous ``[H, W, 3]`` array (grey images repeated)."""
    array = image.as_subclass(torch.Tensor).detach().cpu() if isinstance(image, torch.Tensor) else torch.as_tensor(image)
    if array.dtype != torch.uint8 or array.dim() != 3 or array.shape[0] not in (1, 3):
        raise DataError(f"densecrf: the image must be uint8 [3, H, W], got {array.dtype} {tuple(array.shape)}")
    if tuple(array.shape[-2:]) != tuple(size):
        raise DataError(f"densecrf: image of size {tuple(array.shape[-2:])} but score maps of size {tuple(size)}")
    if array.shape[0] == 1:
        array = array.expand(3, -1, -1)
    return np.ascontiguousarray(array.permute(1, 2, 0).numpy())


class DenseCRF:
    """Post-processor ``(image, prediction) -> prediction`` with the CRF's ``mask`` and marginals (``mask_scores``)."""

    def __init__(self, iterations: int = 10, bilateral_weight: float = 4.0, theta_alpha: float = 121.0,
                 theta_beta: float = 5.0, gaussian_weight: float = 3.0, theta_gamma: float = 3.0,
                 unary: str = "auto", floor: float = 1e-5, supervision: str | None = None) -> None:
        params = {"bilateral_weight": bilateral_weight, "theta_alpha": theta_alpha, "theta_beta": theta_beta,
                  "gaussian_weight": gaussian_weight, "theta_gamma": theta_gamma}
        check_options(iterations, unary, floor, **params)
        self.params = {k: float(v) for k, v in params.items()}
        self.iterations, self.unary, self.floor, self.supervision = iterations, unary, float(floor), supervision
        self._dcrf = load_pydensecrf()

    def __call__(self, image: Any, prediction: dict) -> dict:
        if "score_maps" not in prediction and "mask_scores" not in prediction:
            return prediction
        probs = probabilities(prediction, choose_unary(prediction, self.unary, self.supervision))
        marginals = torch.from_numpy(self.infer(image_hwc(image, tuple(probs.shape[-2:])), probs.numpy()))
        return {**prediction, "mask": marginals.argmax(0), "mask_scores": marginals}

    def infer(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Mean-field marginals ``[C, H, W]`` (float32) for ``probs`` ``[C, H, W]`` and an ``[H, W, 3]`` uint8 image."""
        c, h, w = probs.shape
        unary = np.ascontiguousarray(-np.log(np.maximum(probs, self.floor)).reshape(c, h * w), dtype=np.float32)
        crf = self._dcrf.DenseCRF2D(w, h, c)
        crf.setUnaryEnergy(unary)
        p = self.params
        if p["gaussian_weight"] > 0:
            crf.addPairwiseGaussian(sxy=p["theta_gamma"], compat=p["gaussian_weight"])
        if p["bilateral_weight"] > 0:
            crf.addPairwiseBilateral(sxy=p["theta_alpha"], srgb=p["theta_beta"], rgbim=image,
                                     compat=p["bilateral_weight"])
        return np.asarray(crf.inference(self.iterations), dtype=np.float32).reshape(c, h, w)
