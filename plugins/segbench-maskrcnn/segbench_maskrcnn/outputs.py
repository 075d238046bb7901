"""From Mask R-CNN detections to segbench's image-level outputs: a label map, class score maps, class scores.

All three take the detections of one image in the dataset's class indices
(``classes`` ``[N]``, ``scores`` ``[N]``) and, for the maps, their masks at the
image size (``[N, H, W]``: bool for the label map, probabilities for the score
maps).
"""

from __future__ import annotations

import torch


def label_map(masks: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, background: int,
              min_score: float = 0.0) -> torch.Tensor:
    """int64 ``[H, W]``: each pixel takes the class of the highest-scoring instance covering it.

    Only instances with ``score >= min_score`` are pasted; elsewhere ``background``.
    Equivalent to pasting the instances in increasing score order (the highest wins);
    among equal scores the earlier instance wins.
    """
    size = masks.shape[-2:]
    out = torch.full(size, background, dtype=torch.int64, device=masks.device)
    keep = scores >= min_score
    if not keep.any():
        return out
    masks, classes, scores = masks[keep], classes[keep], scores[keep]
    order = torch.sort(scores, descending=True, stable=True).indices
    masks = masks[order].bool()
    covered = masks.any(dim=0)
    first = masks.to(torch.uint8).argmax(dim=0)  # index (in score order) of the best instance on each pixel
    out[covered] = classes[order][first[covered]].to(torch.int64)
    return out


def score_maps(probs: torch.Tensor, classes: torch.Tensor, scores: torch.Tensor, num_classes: int,
               background: int) -> torch.Tensor:
    """float ``[C, H, W]``: class ``c``'s map is the max over its instances of ``score * mask probability``.

    The background map is ``1 - max`` of the foreground maps. Classes without a
    detection have a zero map.
    """
    maps = probs.new_zeros((num_classes, *probs.shape[-2:]))
    if len(scores):
        weighted = probs.float() * scores.float().view(-1, 1, 1)
        index = classes.long().view(-1, 1, 1).expand_as(weighted)
        maps.scatter_reduce_(0, index, weighted, reduce="amax", include_self=True)
    foreground = torch.ones(num_classes, dtype=torch.bool, device=maps.device)
    foreground[background] = False
    maps[background] = 1.0 - maps[foreground].amax(dim=0)
    return maps


def class_scores(classes: torch.Tensor, scores: torch.Tensor, num_classes: int, background: int) -> torch.Tensor:
    """float ``[C]``: the highest score of an instance of each class (0 without one);
    the background entry is ``1 -`` the highest foreground score."""
    out = scores.new_zeros(num_classes, dtype=torch.float32)
    if len(scores):
        out.scatter_reduce_(0, classes.long(), scores.float(), reduce="amax", include_self=True)
    foreground = torch.ones(num_classes, dtype=torch.bool, device=out.device)
    foreground[background] = False
    out[background] = 1.0 - out[foreground].max()
    return out
