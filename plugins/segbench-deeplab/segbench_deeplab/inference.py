"""DeepLab's test-time augmentation: multi-scale inputs and left-right flips, probabilities averaged."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F


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
    """
    size = tuple(images.shape[-2:])
    total, count = None, 0
    for scale in scales:
        x = images
        if scale != 1.0:
            scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            x = F.interpolate(images, size=scaled, mode="bilinear", align_corners=False)
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for view, flipped in views:
            logits = logits_fn(view).float()
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    return total / count
