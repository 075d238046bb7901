"""Per-pixel loss weights from a target: U-Net's weight map (Ronneberger, Fischer, Brox, MICCAI 2015, Sec. 3, eq. 2).

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))

Choices (the paper gives the formula, w0 = 10 and sigma ~ 5 px, not these details):

- ``w_c`` balances the classes *of the image given* ("balance"): ``w_c(x) = N / (K * n_c)`` for a pixel of
  class ``c``, with ``n_c`` its labelled pixels, ``N`` all labelled pixels and ``K`` the classes present;
  that is ``1 / frequency`` normalised so that the mean of ``w_c`` over labelled pixels is 1 (each class
  present carries the same total weight ``N / K``). The paper balances "the different frequency of pixels
  from a certain class in the training data set" with a pre-computed map; frequencies over a data set can be
  passed as ``class_weights`` (a per-class sequence), ``None`` gives ``w_c = 1``.
- Cells are object instances: the target's instance ``masks`` ``[N, H, W]`` when given (empty masks skipped),
  else the 4-connected components of each non-background class of the semantic ``mask``.
- ``d_i(x)`` is the Euclidean distance from ``x`` to the nearest pixel of cell ``i``
  (``scipy.ndimage.distance_transform_edt`` of the cell's complement: 1 next to the cell); ``d1 <= d2`` are
  the two smallest over the cells.
- The border term applies on background pixels only (``mask == background``): the separation borders
  between touching cells are background in the paper's ground truth (Fig. 3c-d); inside a cell ``d1 = 0``.
  With fewer than two cells ``d2 = inf`` and the term is 0.
- Void pixels (``ignore_index``) weigh 0.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_INDEX = 255


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def cells(mask, instances=None, background: int = 0, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Cells (object instances) as bool ``[N, H, W]``: non-empty ``instances`` when given, else the 4-connected
    components of each class of ``mask`` other than ``background`` and ``ignore_index``."""
    if instances is not None:
        inst = _numpy(instances).astype(bool)
        inst = inst.reshape(-1, *inst.shape[-2:])
        return inst[inst.reshape(len(inst), -1).any(axis=1)]
    from scipy import ndimage

    mask = _numpy(mask)
    out = []
    for c in np.unique(mask):
        if c in (background, ignore_index):
            continue
        labels, n = ndimage.label(mask == c)  # default structure: 4-connectivity
        out.extend(labels == k for k in range(1, n + 1))
    return np.stack(out) if out else np.zeros((0, *mask.shape), dtype=bool)


def border_distances(cell_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel, the distances ``d1 <= d2`` (float64 ``[H, W]``) to the nearest and second-nearest cell of
    ``cell_masks`` bool ``[N, H, W]`` (0 inside a cell; ``inf`` where there are fewer cells)."""
    from scipy import ndimage

    d1 = np.full(cell_masks.shape[-2:], np.inf)
    d2 = d1.copy()
    for cell in cell_masks:
        d = ndimage.distance_transform_edt(~cell)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return d1, d2


def class_balance(mask, class_weights: str | Sequence[float] | None = "balance",
                  ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``w_c`` float64 ``[H, W]``: ``"balance"`` (``N / (K n_c)``, mean 1 over labelled pixels), a per-class
    sequence, or ``None`` (1); 0 on void."""
    mask = _numpy(mask).astype(np.int64)
    labelled = mask != ignore_index
    out = np.zeros(mask.shape, dtype=np.float64)
    if not labelled.any():
        return out
    if class_weights is None:
        out[labelled] = 1.0
    elif isinstance(class_weights, str):
        if class_weights != "balance":
            raise ValueError(f"class_weights must be 'balance', a per-class sequence or None, got {class_weights!r}")
        classes, counts = np.unique(mask[labelled], return_counts=True)
        per_class = labelled.sum() / (len(classes) * counts)
        out[labelled] = per_class[np.searchsorted(classes, mask[labelled])]
    else:
        out[labelled] = np.asarray(class_weights, dtype=np.float64)[mask[labelled]]
    return out


def unet_weight_map(mask: torch.Tensor, instances: torch.Tensor | None = None, *, w0: float = 10.0,
                    sigma: float = 5.0, class_weights: str | Sequence[float] | None = "balance",
                    background: int = 0, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """U-Net's weight map (eq. 2) of one target: float32 ``[H, W]`` on ``mask``'s device (module docstring)."""
    m = _numpy(mask).astype(np.int64)
    weights = class_balance(m, class_weights, ignore_index)
    if w0:
        d1, d2 = border_distances(cells(m, instances, background, ignore_index))
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2.0 * sigma**2))
        weights += np.where(m == background, border, 0.0)
    device = mask.device if isinstance(mask, torch.Tensor) else None
    return torch.from_numpy(weights).to(device=device, dtype=torch.float32)


def weighted_pixel_loss(logits: torch.Tensor, masks: torch.Tensor, weights: torch.Tensor,
                        ignore_index: int = IGNORE_INDEX, normalize: str = "pixels") -> torch.Tensor:
    """``sum_x w(x) CE(x)`` over ``logits`` ``[B, C, H, W]``, divided by the labelled pixels (``"pixels"``: with
    ``w = 1`` the plain mean cross-entropy) or by ``sum w`` over them (``"weights"``); 0 when none is labelled."""
    ce = F.cross_entropy(logits.float(), masks, ignore_index=ignore_index, reduction="none")
    labelled = masks != ignore_index
    total = (ce * weights.to(ce) * labelled).sum()
    if normalize == "pixels":
        return total / labelled.sum().clamp(min=1)
    if normalize == "weights":
        return total / (weights.to(ce) * labelled).sum().clamp(min=torch.finfo(ce.dtype).tiny)
    raise ValueError(f"normalize must be 'pixels' or 'weights', got {normalize!r}")
