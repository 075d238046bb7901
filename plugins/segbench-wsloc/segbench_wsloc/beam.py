"""Beam search over boxes on a feature grid, and the localization map it leaves behind.

A state is a box of whole cells ``(x0, y0, x1, y1)`` (``x0 < x1 <= w``,
``y0 < y1 <= h``). The search starts from the whole grid; each step every
state in the beam spawns 12 successors (shrink one side, grow one side, or
shift the box, by ``step`` cells; boxes smaller than ``min_size`` cells or
leaving the grid are dropped), the scorer rates them, and the ``beam`` best
distinct states of the beam plus its successors form the next beam, so the
best score never decreases. It stops after ``steps`` steps or when no beam
changes. Growing lets a search that shrank a side too early (a wide box gains
by dropping a row that holds a little of the object) take it back. Many
searches (one per (image, class) "group") run together as tensors.

The map: each cell takes the best score of the beam states that covered it
(over every step), plus ``tie * coverage`` where coverage is the fraction of
beam states that covered it; so the map's maximum lies inside the best box
found, at its most often covered cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["MOVES", "BeamResult", "beam_search", "coverage_map", "successors"]

MOVES = torch.tensor([
    [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, -1, 0], [0, 0, 0, -1],  # shrink left, top, right, bottom side
    [-1, 0, -1, 0], [1, 0, 1, 0], [0, -1, 0, -1], [0, 1, 0, 1],  # shift left, right, up, down
    [-1, 0, 0, 0], [0, -1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1],  # grow left, top, right, bottom side
])
"""Successor moves ``(dx0, dy0, dx1, dy1)`` in units of ``step`` cells."""

Scorer = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class BeamResult:
    """``boxes`` ``[G, K, 4]`` (cells, int64) and ``scores`` ``[G, K]`` of the final beam, best first;
    ``valid`` ``[G, K]`` is False for empty slots (fewer than ``beam`` states exist); ``heat`` ``[G, h, w]``
    the localization map; ``steps`` the number of steps run."""

    boxes: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    heat: torch.Tensor
    steps: int


def successors(boxes: torch.Tensor, valid: torch.Tensor, h: int, w: int, step: int = 1,
               min_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``[G, K, 4]`` boxes -> ``[G, K * 12, 4]`` successors and their validity (inside the grid, at least
    ``min_size`` cells per side (capped by the grid), from a valid parent)."""
    g, k, _ = boxes.shape
    cand = (boxes[:, :, None, :] + step * MOVES.to(boxes.device)[None, None]).reshape(g, k * len(MOVES), 4)
    x0, y0, x1, y1 = cand.unbind(-1)
    ok = (x0 >= 0) & (y0 >= 0) & (x1 <= w) & (y1 <= h)
    ok &= (x1 - x0 >= min(min_size, w)) & (y1 - y0 >= min(min_size, h))
    return cand, ok & valid.repeat_interleave(len(MOVES), dim=1)


def _box_ids(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    x0, y0, x1, y1 = boxes.unbind(-1)
    return ((x0 * (h + 1) + y0) * (w + 1) + x1) * (h + 1) + y1


def _distinct_best(boxes: torch.Tensor, scores: torch.Tensor, valid: torch.Tensor, beam: int, h: int, w: int):
    """The ``beam`` best distinct valid states of each group (invalid slots last, marked invalid)."""
    scores = torch.where(valid, scores, torch.full_like(scores, -torch.inf))
    ids = torch.where(valid, _box_ids(boxes, h, w), torch.full_like(scores, -1, dtype=torch.long))
    sorted_ids, order = ids.sort(dim=1, stable=True)
    repeat = torch.zeros_like(valid)
    repeat[:, 1:] = sorted_ids[:, 1:] == sorted_ids[:, :-1]
    duplicate = torch.zeros_like(valid).scatter(1, order, repeat)
    scores = scores.masked_fill(duplicate, -torch.inf)
    best, index = scores.topk(min(beam, scores.shape[1]), dim=1)
    return boxes.gather(1, index[..., None].expand(-1, -1, 4)), best, torch.isfinite(best)


def coverage_map(boxes: torch.Tensor, valid: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``[G, K, h, w]`` bool: which cells each box covers (nothing for invalid boxes)."""
    xs = torch.arange(w, device=boxes.device)
    ys = torch.arange(h, device=boxes.device)
    x0, y0, x1, y1 = (v[..., None] for v in boxes.unbind(-1))
    inside_x, inside_y = (xs >= x0) & (xs < x1), (ys >= y0) & (ys < y1)  # [G, K, w], [G, K, h]
    return inside_y[..., :, None] & inside_x[..., None, :] & valid[..., None, None]


def beam_search(score: Scorer, groups: int, h: int, w: int, beam: int = 5, steps: int = 0, step: int = 1,
                min_size: int = 1, tie: float = 1e-3, device=None) -> BeamResult:
    """Run ``groups`` beam searches on an ``h x w`` grid; ``score(boxes [G, n, 4]) -> [G, n]``.

    ``steps = 0`` means ``h + w`` (enough to shrink the whole grid to one cell).
    """
    steps = steps or h + w
    boxes = torch.tensor([0, 0, w, h], device=device).expand(groups, 1, 4).clone()
    valid = torch.ones(groups, 1, dtype=torch.bool, device=device)
    scores = score(boxes).float()
    best_cover = torch.full((groups, h, w), -torch.inf, device=device)
    count = torch.zeros(groups, h, w, device=device)
    states = torch.zeros(groups, 1, device=device)

    def visit(boxes, scores, valid):
        cover = coverage_map(boxes, valid, h, w)
        values = torch.where(cover, scores[..., None, None], torch.full_like(cover, -torch.inf, dtype=scores.dtype))
        best_cover.copy_(torch.maximum(best_cover, values.amax(1)))
        count.add_(cover.sum(1))
        states.add_(valid.sum(1, keepdim=True))

    visit(boxes, scores, valid)
    done = 0
    for done in range(1, steps + 1):
        cand, ok = successors(boxes, valid, h, w, step, min_size)
        cand_scores = torch.full(ok.shape, -torch.inf, device=scores.device)
        if ok.any():  # invalid successors are scored as the whole grid, then masked out
            full = torch.tensor([0, 0, w, h], device=cand.device)
            cand_scores = score(torch.where(ok[..., None], cand, full)).float()
        pool_boxes = torch.cat([boxes, cand], 1)
        pool_scores = torch.cat([scores, cand_scores], 1)
        new_boxes, new_scores, new_valid = _distinct_best(pool_boxes, pool_scores, torch.cat([valid, ok], 1),
                                                          beam, h, w)
        old = torch.where(valid, _box_ids(boxes, h, w), -1).sort(1).values
        new = torch.where(new_valid, _box_ids(new_boxes, h, w), -1).sort(1).values
        if old.shape == new.shape and torch.equal(old, new):
            break
        boxes, scores, valid = new_boxes, new_scores, new_valid
        visit(boxes, scores, valid)
    heat = best_cover + tie * count / states[..., None]
    return BeamResult(boxes, scores, valid, heat, done)
