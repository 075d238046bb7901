"""Average precision over all classes at once, as in the PASCAL VOC devkit.

:func:`average_precision` is the one AP routine behind ``cls_map`` and
``loc_map``. It ranks every class at once (one sort per class, tied scores in
dataset order) and takes cumulative sums in float64: 5,000 images x 80
classes take about 25 ms on one CPU core, 4x faster than scikit-learn.
:class:`RowMetric` is the streaming base those metrics share: ``update``
appends small per-image rows, ``compute`` concatenates them.

Variants (``docs/metrics.md`` has the formulas):

``voc12``
    VOC devkit ``VOCap.m`` (VOC 2010 and later): area under the monotone
    precision envelope. Ties: ranked by a stable sort of ``-score``, i.e. tied
    images keep their dataset order (MATLAB ``[so,si]=sort(-out)``).
``voc07``
    VOC 2007 devkit ``VOCevalcls.m``: mean over the 11 recall thresholds
    ``0:0.1:1`` of the highest precision at a recall >= the threshold. The
    thresholds are MATLAB's ``0:0.1:1`` as doubles (its 4th is
    0.30000000000000004); ties as ``voc12``.
``raw``
    Non-interpolated AP, ``sum_k (R_k - R_{k-1}) P_k`` over distinct score
    thresholds, equal to ``sklearn.metrics.average_precision_score``: tied
    scores form one threshold, so the order of tied images does not matter.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from segbench.errors import ConfigError, DataError

VARIANTS = ("voc12", "voc07", "raw")
CHUNK_ELEMENTS = 1 << 15  # entries per block of classes: the working arrays stay in cache

# MATLAB's 0:0.1:1 computes its first half as k*0.1 and its second half as
# 1-(10-k)*0.1, so only the 4th value differs from k/10 (0.30000000000000004).
VOC07_THRESHOLDS = tuple([k * 0.1 for k in range(6)] + [1 - (10 - k) * 0.1 for k in range(6, 11)])


def check_variant(variant: str, metric: str) -> str:
    """Return ``variant`` or raise :class:`ConfigError` naming the metric and the choices."""
    if variant not in VARIANTS:
        raise ConfigError(f"metric '{metric}': variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return variant


def average_precision(
    scores: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    num_positives: torch.Tensor | None = None,
    variant: str = "voc12",
) -> torch.Tensor:
    """Per-column AP of ``scores`` ``[N, C]``; returns float64 ``[C]``.

    ``positive`` / ``negative`` (bool ``[N, C]``) mark true and false
    positives; an entry that is neither is left out (VOC "difficult",
    ``gt == 0`` in the devkit). ``num_positives`` ``[C]`` is the recall
    denominator (default: ``positive.sum(0)``; ``loc_map`` passes the number of
    images containing the class, which may exceed the true positives). A
    column with ``num_positives == 0`` gives NaN.
    """
    check_variant(variant, "average_precision")
    if scores.dim() != 2 or positive.shape != scores.shape or negative.shape != scores.shape:
        raise DataError(
            f"average_precision expects scores, positive and negative of one shape [N, C], got "
            f"{tuple(scores.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    # NumPy on [C, N] (each class a contiguous row): single-threaded, so its
    # dozen passes stay fast on a busy machine, where torch's many small
    # parallel regions can each wait milliseconds for a free core.
    values = np.ascontiguousarray(scores.detach().to("cpu", torch.float64).numpy().T)
    pos = np.ascontiguousarray(positive.detach().to("cpu", torch.bool).numpy().T)
    neg = np.ascontiguousarray(negative.detach().to("cpu", torch.bool).numpy().T) & ~pos
    npos = pos.sum(1) if num_positives is None else num_positives.detach().to("cpu").numpy().reshape(-1)
    npos = npos.astype(np.float64)[:, None]
    if np.isnan(values).any():
        raise DataError("average_precision: scores contain NaN")
    c, n = values.shape
    if n == 0:
        return torch.full((c,), float("nan"), dtype=torch.float64)
    # A few classes at a time, so that the dozen [classes, N] arrays stay in cache.
    step = max(1, CHUNK_ELEMENTS // n)
    ap = np.concatenate([
        _average_precision(values[i:i + step], pos[i:i + step], neg[i:i + step], npos[i:i + step], variant)
        for i in range(0, c, step)
    ])
    return torch.from_numpy(ap)


def _average_precision(values: np.ndarray, pos: np.ndarray, neg: np.ndarray, npos: np.ndarray,
                       variant: str) -> np.ndarray:
    """:func:`average_precision` on NumPy rows: ``values``, ``pos``, ``neg`` ``[C, N]``, ``npos`` ``[C, 1]``."""
    c, n = values.shape
    order = descending_order(values)
    flat = order + (np.arange(c, dtype=np.int64) * n)[:, None]  # flat indices of the ranked entries
    tp = _ranked_cumsum(pos, flat)
    if (pos | neg).all():  # nothing ignored: every entry is a true or a false positive
        fp = np.arange(1, n + 1, dtype=np.float64) - tp
    else:
        fp = _ranked_cumsum(neg, flat)
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tp / npos  # NaN or inf in classes without positives: their AP is NaN below
        # Before the first scored entry tp+fp == 0: the devkit gets NaN there,
        # which its max() skips; 0 is equivalent as precision is never negative.
        prec = np.nan_to_num(tp / (tp + fp), copy=False, nan=0.0)
        if variant == "raw":
            ap = _raw(values.ravel().take(flat), rec, prec)
        else:
            envelope = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
            ap = _voc12(rec, envelope) if variant == "voc12" else _voc07(rec, envelope)
    return np.where(npos[:, 0] > 0, ap, np.nan)


def descending_order(values: np.ndarray) -> np.ndarray:
    """Per row of ``values`` ``[C, N]`` (float64): the indices by decreasing value, tied
    values in index order (the order of MATLAB's stable ``sort(-out)``).

    Sorting unique keys with NumPy's introsort is several times faster than a
    stable sort: when every value is a float32 number (the usual case) the key
    packs (value as an order-preserving integer, index) in one int64 and the
    index is read back from its low bits; other rows are argsorted by value,
    and again on (rank of the value, index) when they hold ties.
    """
    n = values.shape[1]
    as32 = values.astype(np.float32) + np.float32(0.0)  # + 0.0 turns -0.0 into +0.0: they tie
    if n <= 1 << 30 and np.array_equal(as32, values):
        bits = as32.view(np.int32).astype(np.int64)
        key = np.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)  # increases with the float
        # (2**31 - key) (33 bits, decreasing value) above the index (shift bits): sorting
        # the packed keys, faster than argsort, ranks by value then index.
        shift = max(1, (n - 1).bit_length())
        packed = ((2**31 - key) << shift) | np.arange(n, dtype=np.int64)
        return np.sort(packed, axis=1) & ((1 << shift) - 1)
    order = np.argsort(-values, axis=1)
    ranked = np.take_along_axis(values, order, 1)
    tied = ranked[:, 1:] == ranked[:, :-1]
    if tied.any():
        group = np.zeros(order.shape, dtype=np.int64)
        np.cumsum(~tied, axis=1, out=group[:, 1:])
        order = np.take_along_axis(order, np.argsort(group * n + order, axis=1), 1)
    return order


def _ranked_cumsum(flags: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """Cumulative count of ``flags`` ``[C, N]`` down each ranking, as float64."""
    ranked = np.ascontiguousarray(flags).ravel().take(flat)
    return np.cumsum(ranked, axis=1, dtype=np.int64).astype(np.float64)


def _voc12(rec: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    # VOCap.m: sum over the points where recall changes of (mrec(i)-mrec(i-1))*mpre(i).
    # Recall changes only at true positives; the devkit's closing point
    # (recall 1, precision 0) adds nothing.
    step = rec.copy()
    step[:, 1:] -= rec[:, :-1]
    return (step * envelope).sum(1)


def _voc07(rec: np.ndarray, envelope: np.ndarray) -> np.ndarray:
    # VOCevalcls.m (2007): for t=0:0.1:1, p=max(prec(rec>=t)) (0 if empty), ap=ap+p/11.
    # Recall is non-decreasing along the ranking, so {rec >= t} is a suffix and
    # its maximum precision is the envelope at the suffix's first entry.
    rows = np.arange(rec.shape[0])
    padded = np.concatenate([envelope, np.zeros((rec.shape[0], 1))], 1)
    ap = np.zeros(rec.shape[0])
    for t in VOC07_THRESHOLDS:
        first = (rec < t).sum(1)  # N when no entry reaches t -> the padded zero
        ap = ap + padded[rows, first] / 11
    return ap


def _raw(ranked: np.ndarray, rec: np.ndarray, prec: np.ndarray) -> np.ndarray:
    # sklearn's average_precision_score: one point per distinct score (the last
    # entry of each run of ties), AP = sum (R_k - R_{k-1}) * P_k with R_0 = 0.
    last = np.ones(rec.shape, dtype=bool)
    last[:, :-1] = ranked[:, 1:] != ranked[:, :-1]
    prev = np.maximum.accumulate(np.where(last, rec, 0.0), axis=1)  # recall at the latest point so far
    prev = np.concatenate([np.zeros((rec.shape[0], 1)), prev[:, :-1]], 1)
    return np.where(last, (rec - prev) * prec, 0.0).sum(1)


def nanmean(values: torch.Tensor) -> float:
    """Mean of the non-NaN entries as a float (NaN when there are none)."""
    kept = values[~torch.isnan(values)]
    return float(kept.mean()) if kept.numel() else float("nan")


class RowMetric:
    """Streaming base for per-image metrics: ``update`` appends rows ``[B, C]``.

    DDP: every state tensor has one row per image; ``state_reductions`` says
    ``"cat"`` for each, so the engine all-gathers them (ranks padded to one
    length, then trimmed) and calls :meth:`load_state_tensors`. Tied scores
    are ranked in row order (see the variant rules), so gathered rows rank
    ties rank-major, not in dataset order.
    """

    name: ClassVar[str] = ""
    state_reductions: ClassVar[dict[str, str]] = {}
    _dtypes: ClassVar[dict[str, torch.dtype]] = {}

    def __init__(self, num_classes: int | None = None, background: int | None = None) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ConfigError(f"metric '{self.name}': num_classes must be a positive integer, got {num_classes!r}")
        if background is not None and (isinstance(background, bool) or not isinstance(background, int)):
            raise ConfigError(f"metric '{self.name}': background must be an integer or None, got {background!r}")
        self.num_classes = num_classes
        self.background = background
        self.reset()

    def reset(self) -> None:
        """Forget every image seen so far."""
        self._rows: dict[str, list[torch.Tensor]] = {key: [] for key in self.state_reductions}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The state as tensors, one row per image (reduce each with ``state_reductions``)."""
        c = self.num_classes or 0
        out = {}
        for key, rows in self._rows.items():
            out[key] = torch.cat(rows) if rows else torch.zeros((0, c), dtype=self._dtypes[key])
        return out

    def load_state_tensors(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the state by ``state`` (e.g. rows gathered from every rank)."""
        missing = set(self.state_reductions) - set(state)
        if missing:
            raise DataError(f"metric '{self.name}': state lacks {sorted(missing)}")
        widths = {t.shape[1] for t in state.values() if t.dim() == 2}
        if len(widths) > 1:
            raise DataError(f"metric '{self.name}': state tensors disagree on the number of classes")
        if widths and state[next(iter(self.state_reductions))].shape[0] > 0:
            self._set_num_classes(widths.pop())
        self._rows = {key: [state[key]] for key in self.state_reductions}

    def _set_num_classes(self, c: int) -> None:
        if self.num_classes is None:
            self.num_classes = c
        elif self.num_classes != c:
            raise DataError(f"metric '{self.name}': expected {self.num_classes} classes, got {c}")
        if self.background is not None and not 0 <= self.background < c:
            raise ConfigError(f"metric '{self.name}': background {self.background} is not a class index (0..{c - 1})")

    def _mean_excluding(self, per_class: torch.Tensor) -> torch.Tensor:
        """``per_class`` with the background set to NaN (left out of every mean)."""
        per_class = per_class.clone()
        if self.background is not None and per_class.numel():
            per_class[self.background] = float("nan")
        return per_class


def get_tensor(d: dict, key: str, what: str, metric: str) -> torch.Tensor:
    """``d[key]`` as a tensor, or a :class:`DataError` naming the metric and the keys present."""
    if key not in d:
        raise DataError(f"metric '{metric}' needs '{key}' in every {what}; got keys {sorted(d)}")
    value = d[key]
    return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


def stack_rows(rows: list[torch.Tensor], key: str, metric: str) -> torch.Tensor:
    """Stack per-image vectors into ``[B, C]``; a :class:`DataError` when their lengths differ."""
    rows = [r.reshape(-1) for r in rows]
    sizes = sorted({r.numel() for r in rows})
    if len(sizes) > 1:
        raise DataError(f"metric '{metric}': '{key}' rows in one batch have different lengths {sizes}")
    return torch.stack(rows)
