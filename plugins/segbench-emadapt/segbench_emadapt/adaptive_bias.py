"""The EM-Adapt E-step: image-specific class biases that make each present class cover a target share.

Papandreou et al. (ICCV 2015), "EM-Adapt": given per-pixel class scores
``f[c, m]`` (log-probabilities; any per-pixel shift gives the same result)
and the image's labels, the latent segmentation is

    y[m] = argmax_c (f[c, m] + b[c])   over the classes present in the image,

where the classes absent from the image never win (the reference layer's
``suppress_others``) and each present class ``c`` gets a bias ``b[c] >= 0``
chosen so that it wins on at least ``ceil(share_c * n)`` of the ``n`` pixels:
``share = bg_share`` for the background (always present), ``fg_share`` for
the foreground classes. The bias is the ``k``-th smallest gap between the
current pointwise maximum and the class's score (a quantile), so a class
that already covers its share gets no bias.

As in the reference Caffe layer (``AdaptiveBiasChannelLayer``), classes are
visited in turn, background first, then the present foreground classes in a
random order (``shuffle``); a later class may take pixels from an earlier
one, and ``sweeps`` repeats the visit. The visit order is per image, and the
whole computation is vectorised over the batch and the pixels: the only loop
is over the (at most ``C``) visit positions.

Differences from the reference layer: ``k = ceil(share * n)`` pixels rather
than ``floor(share * n) + 1``, and a bias that is not zero is raised by a
tiny tolerance so that the ``k``-th pixel is won outright rather than tied.
"""

from __future__ import annotations

import math

import torch

__all__ = ["adaptive_biases", "latent_segmentation", "target_counts"]

TOLERANCE = 1e-5
"""Relative margin added to a non-zero bias (times ``1 + max |score|`` of the image)."""


def target_counts(n: int, fg_share: float, bg_share: float) -> tuple[int, int]:
    """Pixels a present foreground / background class must win out of ``n``: ``ceil(share * n)``, in [1, n]."""
    def count(share: float) -> int:
        return min(max(math.ceil(share * n - 1e-9), 1), n)

    return count(fg_share), count(bg_share)


def adaptive_biases(
    scores: torch.Tensor,
    present: torch.Tensor,
    *,
    background: int | None = 0,
    fg_share: float = 0.2,
    bg_share: float = 0.4,
    sweeps: int = 1,
    shuffle: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Per-image class biases ``[B, C]`` (zero for classes not present) for ``scores`` ``[B, C, H, W]``.

    ``present`` is a bool ``[B, C]``; the ``background`` class (if not
    ``None``) counts as present in every image. Images with no present class
    get no bias. With ``shuffle`` the foreground classes are visited in a
    random order drawn from ``generator`` (torch's global generator when
    ``None``), else in increasing class order.
    """
    scores, present = _checked(scores, present, background)
    b, c = present.shape
    flat = scores.detach().float().flatten(2)  # [B, C, N]
    n = flat.shape[-1]
    k_fg, k_bg = target_counts(n, fg_share, bg_share)
    biases = flat.new_zeros(b, c)
    count = present.sum(1)  # [B]
    if int(count.max()) == 0:
        return biases

    order = _visit_order(present, background, shuffle, generator)  # [B, C], present classes first
    low = torch.finfo(flat.dtype).min
    extremum = flat.masked_fill(~present[:, :, None], low).amax(1)  # [B, N] pointwise max over present classes
    tolerance = TOLERANCE * (1.0 + flat.abs().flatten(1).amax(1))  # [B]
    rows = torch.arange(b, device=flat.device)
    for _ in range(sweeps):
        for slot in range(int(count.max())):
            cls = order[:, slot]  # [B]
            active = slot < count
            current = flat[rows, cls] + biases[rows, cls, None]  # [B, N]
            gap = (extremum - current).clamp_min(0)
            k = torch.full_like(cls, k_fg)
            if background is not None:
                k = torch.where(cls == background, torch.full_like(cls, k_bg), k)
            kth = gap.sort(dim=1).values.gather(1, (k - 1)[:, None]).squeeze(1)  # the k-th smallest gap
            step = torch.where(active & (kth > 0), kth + tolerance, torch.zeros_like(kth))
            biases[rows, cls] += step
            raised = torch.maximum(extremum, current + step[:, None])
            extremum = torch.where(active[:, None], raised, extremum)  # inactive rows point at absent classes
    return biases


def latent_segmentation(
    scores: torch.Tensor,
    present: torch.Tensor,
    *,
    background: int | None = 0,
    allowed: torch.Tensor | None = None,
    **options,
) -> torch.Tensor:
    """The E-step label map ``[B, H, W]`` (int64): argmax of ``scores + biases`` over the allowed classes.

    ``allowed`` (bool ``[B, C]``, default: ``present``) lists the classes that
    may win without being boosted (e.g. VOC "difficult" classes); the others
    get no pixel. An image with no allowed class is labelled by the plain
    argmax. ``options`` go to :func:`adaptive_biases`.
    """
    scores, present = _checked(scores, present, background)
    biases = adaptive_biases(scores, present, background=background, **options)
    allowed = present if allowed is None else (allowed.to(present.device, torch.bool) | present)
    allowed = allowed | ~allowed.any(1, keepdim=True)  # nothing allowed: every class may win
    biased = scores.detach().float() + biases[:, :, None, None]
    biased = biased.masked_fill(~allowed[:, :, None, None], float("-inf"))
    return biased.argmax(1)


def _checked(scores: torch.Tensor, present: torch.Tensor, background: int | None):
    if scores.dim() != 4:
        raise ValueError(f"scores must be [B, C, H, W], got shape {tuple(scores.shape)}")
    if tuple(present.shape) != tuple(scores.shape[:2]):
        raise ValueError(f"present must be [B, C] = {tuple(scores.shape[:2])}, got {tuple(present.shape)}")
    present = present.to(scores.device, torch.bool).clone()
    if background is not None:
        present[:, background] = True
    return scores, present


def _visit_order(present: torch.Tensor, background: int | None, shuffle: bool,
                 generator: torch.Generator | None) -> torch.Tensor:
    """``[B, C]`` class indices: background first, then present classes (shuffled or ascending), then absent."""
    b, c = present.shape
    if shuffle:
        key = torch.rand(b, c, generator=generator, device="cpu").to(present.device)
    else:
        key = torch.arange(c, device=present.device, dtype=torch.float32).expand(b, c) / c
    key = key + 1.0  # present foreground classes: keys in [1, 2)
    if background is not None:
        key[:, background] = 0.0
    key = key.masked_fill(~present, 3.0)
    return key.argsort(dim=1, stable=True)
