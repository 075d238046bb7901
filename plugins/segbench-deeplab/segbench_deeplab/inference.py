"""DeepLab's test-time augmentation: multi-scale inputs and left-right flips, probabilities averaged."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from segbench.engine.tta import average_views


def multiscale_probabilities(
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Mean softmax over ``scales`` (and their left-right flips) at the input size: ``[B, C, H, W]``.

    For each scale the batch is resized (bilinear) to ``round(s * H) x
    round(s * W)``; ``logits_fn`` returns logits at the size it is given;
    the logits are resized back to ``H x W`` (bilinear), turned into
    probabilities (softmax over classes) and averaged over every scale and
    flip, as DeepLab v2/v3 evaluate (flipped outputs are flipped back first).
    The engine's averaging (:func:`segbench.engine.tta.average_views`) with the
    softmax applied to each view's logits: the engine's own ``tta`` averages
    the probabilities ``predict`` returns instead (softmax before the resize),
    so the recipes keep this one. DeepLab v2's MSC (max over scales, in
    training and inference) is :func:`segbench.nn.multiscale.multiscale_max`.
    """
    return average_views(logits_fn, images, scales, flip, post=lambda logits: logits.softmax(dim=1))
