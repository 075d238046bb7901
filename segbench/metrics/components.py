"""8-connected components of every superlevel set ``{q > T}`` of a uint8 map at once, from row runs.

Labelling each thresholded map (``scipy.ndimage.label`` per threshold) costs
a full pass over the image per threshold. Here every threshold is handled in
one set of array operations: a row run of ``{q > T}`` starts at pixel ``j``
exactly for the levels ``q[j - 1] <= T < q[j]`` (ends likewise with
``q[j + 1]``), so the runs of all levels are enumerated from the pixels
directly; runs of adjacent rows at one level that overlap (or touch
diagonally) are joined, and ``scipy.sparse.csgraph.connected_components``
labels the run graph. Smooth maps have a few runs per row and level, so the
work is about (rows x levels) runs instead of (pixels x levels).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


class Components(NamedTuple):
    """One entry per component, ordered by level index, then by the raster order of its first pixel.

    ``level`` indexes ``levels``; ``size`` counts pixels; the box is inclusive
    pixel indices ``x0..x1`` (columns) and ``y0..y1`` (rows).
    """

    level: np.ndarray
    size: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray


def superlevel_components(q: np.ndarray, levels: np.ndarray) -> Components:
    """The 8-connected components of ``q > levels[k]`` for every k (``q`` uint8 ``[H, W]``, ``levels`` ints
    strictly increasing)."""
    h, w = q.shape
    levels = np.asarray(levels, dtype=np.int64)
    # below[v + 1] = how many levels are < v, for v in -1..255 (-1 stands for "outside the image")
    below = np.searchsorted(levels, np.arange(-1, 256), side="left")
    value = below[q.astype(np.int64) + 1].ravel()  # the pixel is in {q > levels[k]} for k < value
    padded = np.pad(q.astype(np.int64) + 1, ((0, 0), (1, 1)))  # 0 outside: "below" index of -1
    left = below[padded[:, :-2]].ravel()
    right = below[padded[:, 2:]].ravel()
    start_pixel, start_level = _ragged(left, value)  # a run starts at levels left <= k < value
    end_pixel, end_level = _ragged(right, value)
    order = np.argsort(start_level.astype(np.uint16), kind="stable")  # (level, row, column): radix sort
    level, start = start_level[order], start_pixel[order]
    end = end_pixel[np.argsort(end_level.astype(np.uint16), kind="stable")]
    if level.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Components(empty, empty, empty, empty, empty, empty)
    row, a, b = start // w, start % w, end % w
    group = level * (h + 1) + row

    def key(g: np.ndarray, x: np.ndarray) -> np.ndarray:
        return g * (w + 2) + x + 1

    # runs of the next row at the same level touching [a - 1, b + 1]: a contiguous block [lo, hi)
    lo = np.searchsorted(key(group, b), key(group + 1, a - 1), side="left")
    hi = np.searchsorted(key(group, a), key(group + 1, b + 1), side="right")
    src, dst = _ragged(lo, hi)
    n = level.size
    graph = coo_matrix((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    by = np.argsort(label, kind="stable")  # runs grouped by component, each group in run order
    first = np.flatnonzero(np.r_[True, label[by][1:] != label[by][:-1]])
    order = np.argsort(by[first])  # components by their first run: (level, raster order)
    stats = (level[by][first], np.add.reduceat((b - a + 1)[by], first), np.minimum.reduceat(a[by], first),
             row[by][first], np.maximum.reduceat(b[by], first), np.maximum.reduceat(row[by], first))
    return Components(*(s[order] for s in stats))


def _ragged(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every i with ``lo[i] < hi[i]``, the pairs ``(i, k)`` for ``k`` in ``lo[i]..hi[i] - 1``, i-major."""
    kept = np.flatnonzero(hi > lo)
    lo, count = lo[kept], hi[kept] - lo[kept]
    owner = np.repeat(kept, count)
    offset = np.cumsum(count) - count
    k = np.arange(owner.size, dtype=np.int64) - np.repeat(offset - lo, count)
    return owner, k
