"""Object-specific box proposals from class score maps: windows of several sizes, scored by the map, NMS.

Every window of ``kh x kw`` cells of the score map (stride 1, for each size in
``box_sizes``, a fraction of the map side) is a candidate box; its score for a
class is the mean of that class's map over the window (``avg_pool2d``). Boxes
are in input pixels, XYXY: cell ``j`` of a ``w``-cell map covers
``[j * W / w, (j + 1) * W / w)``. Per (image, class), the best ``pre_nms``
windows go through torchvision's ``batched_nms`` and the ``top_k`` best
survivors are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

__all__ = ["Proposals", "window_sizes", "window_scores", "propose"]


def window_sizes(h: int, w: int, box_sizes: tuple[float, ...]) -> list[tuple[int, int]]:
    """Distinct window sizes ``(kh, kw)`` in cells for fractions ``box_sizes`` of an ``h x w`` map."""
    sizes: list[tuple[int, int]] = []
    for f in box_sizes:
        size = (min(max(int(f * h + 0.5), 1), h), min(max(int(f * w + 0.5), 1), w))
        if size not in sizes:
            sizes.append(size)
    return sizes


def window_scores(maps: torch.Tensor, image_size: tuple[int, int],
                  box_sizes: tuple[float, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every window's mean score: ``maps`` ``[B, C, h, w]`` -> scores ``[B, C, N]`` and boxes ``[N, 4]``
    (XYXY, pixels of an image of ``image_size = (H, W)``)."""
    b, c, h, w = maps.shape
    height, width = image_size
    sy, sx = height / h, width / w
    scores, boxes = [], []
    for kh, kw in window_sizes(h, w, box_sizes):
        pooled = F.avg_pool2d(maps, (kh, kw), stride=1)  # [B, C, h - kh + 1, w - kw + 1]
        ys, xs = torch.meshgrid(torch.arange(pooled.shape[2], device=maps.device),
                                torch.arange(pooled.shape[3], device=maps.device), indexing="ij")
        ys, xs = ys.reshape(-1).to(maps.dtype), xs.reshape(-1).to(maps.dtype)
        boxes.append(torch.stack([xs * sx, ys * sy, (xs + kw) * sx, (ys + kh) * sy], 1))
        scores.append(pooled.flatten(2))
    return torch.cat(scores, 2), torch.cat(boxes, 0)


@dataclass
class Proposals:
    """Flat proposals: ``image`` and ``classes`` ``[M]`` (int64), ``boxes`` ``[M, 4]``, ``scores`` ``[M]``
    (the window's mean map score), sorted by (image, class, decreasing score)."""

    image: torch.Tensor
    classes: torch.Tensor
    boxes: torch.Tensor
    scores: torch.Tensor


def propose(maps: torch.Tensor, image_size: tuple[int, int], box_sizes: tuple[float, ...], top_k: int,
            iou: float = 0.5, active: torch.Tensor | None = None, pre_nms: int = 50) -> Proposals:
    """Up to ``top_k`` boxes per (image, class) where ``active`` ``[B, C]`` (bool) is true (default: all).

    Windows are scored by :func:`window_scores`; the ``pre_nms`` best of each
    (image, class) go through ``batched_nms`` at ``iou``; the ``top_k`` best
    kept ones are returned.
    """
    b, c = maps.shape[:2]
    scores, boxes = window_scores(maps, image_size, box_sizes)  # [B, C, N], [N, 4]
    n = boxes.shape[0]
    if active is None:
        active = torch.ones(b, c, dtype=torch.bool, device=maps.device)
    groups = active.reshape(-1).nonzero().squeeze(1)  # (image * C + class) of each proposing group
    empty = Proposals(groups.new_zeros(0), groups.new_zeros(0), boxes.new_zeros(0, 4), scores.new_zeros(0))
    if groups.numel() == 0:
        return empty
    k = min(pre_nms, n)
    best, index = scores.reshape(b * c, n)[groups].topk(k, dim=1)  # [G, k]
    group_of = groups[:, None].expand(-1, k).reshape(-1)
    flat_boxes, flat_scores = boxes[index.reshape(-1)], best.reshape(-1)
    keep = batched_nms(flat_boxes.float(), flat_scores.float(), group_of, iou)  # by decreasing score
    order = torch.sort(group_of[keep], stable=True).indices  # group-major, score order kept inside groups
    keep = keep[order]
    kept_groups = group_of[keep]
    first = torch.searchsorted(kept_groups, kept_groups, right=False)
    rank = torch.arange(keep.numel(), device=keep.device) - first
    keep = keep[rank < top_k]
    kept_groups = group_of[keep]
    return Proposals(kept_groups // c, kept_groups % c, flat_boxes[keep], flat_scores[keep])
