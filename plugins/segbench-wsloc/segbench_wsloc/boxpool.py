"""Mean features inside whole-cell boxes of a feature map, in O(1) per box (a summed-area table).

For boxes whose sides lie on cell edges this equals torchvision's
``roi_align(features, rois, 1, 1.0, sampling_ratio=-1, aligned=True)`` (one
bilinear sample at every cell centre; the tests check it), but its cost does
not grow with the box's area: the beam search scores thousands of boxes per
batch, most of them large, where ``roi_align`` took 90 % of the prediction time.
"""

from __future__ import annotations

import torch

__all__ = ["BoxMeans"]


class BoxMeans:
    """Precomputed summed-area table of ``features`` ``[B, D, h, w]``; call with image indices ``[N]`` and
    boxes ``[N, 4]`` (whole cells, XYXY, ``0 <= x0 < x1 <= w``) to get their mean features ``[N, D]``."""

    def __init__(self, features: torch.Tensor) -> None:
        b, d, h, w = features.shape
        table = features.double().cumsum(2).cumsum(3)
        table = torch.nn.functional.pad(table, (1, 0, 1, 0))  # [B, D, h + 1, w + 1], zero first row/column
        self.table = table.flatten(2).transpose(1, 2).contiguous()  # [B, (h + 1) * (w + 1), D]
        self.width = w + 1
        self.dtype = features.dtype

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        x0, y0, x1, y1 = boxes.long().unbind(-1)
        t, w = self.table, self.width
        total = t[image, y1 * w + x1] - t[image, y0 * w + x1] - t[image, y1 * w + x0] + t[image, y0 * w + x0]
        area = ((x1 - x0) * (y1 - y0)).clamp_min(1).to(total.dtype)
        return (total / area[:, None]).to(self.dtype)
