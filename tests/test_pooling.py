"""segbench.nn.pooling: WELDON / WILDCAT region pooling against hand computations and a naive loop."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench.nn.heads import ClassMapHead
from segbench.nn.pooling import ClassWisePool2d, WeldonPool2d, resolve_k, weldon_pool2d


def naive_weldon(x: torch.Tensor, kmax, kmin, alpha: float) -> torch.Tensor:
    """One image, one class at a time: sort the cells in plain Python and average the ends."""
    b, c, h, w = x.shape
    n = h * w
    out = torch.empty(b, c, dtype=x.dtype)
    for i in range(b):
        for j in range(c):
            cells = sorted(x[i, j].flatten().tolist(), reverse=True)
            k_hi = resolve_k(kmax, n)
            score = sum(cells[:k_hi]) / k_hi
            k_lo = resolve_k(kmin, n)
            if k_lo:
                score += alpha * sum(cells[-k_lo:]) / k_lo
            out[i, j] = score
    return out


def test_hand_computed_scores():
    x = torch.tensor([[[[1.0, 5.0, 3.0], [2.0, -1.0, 4.0]]]])  # one image, one class, 2x3 regions
    assert WeldonPool2d(kmax=2, kmin=1)(x).item() == pytest.approx((5 + 4) / 2 + (-1))
    assert WeldonPool2d(kmax=2, kmin=1, alpha=0.5)(x).item() == pytest.approx(4.5 - 0.5)
    assert WeldonPool2d(kmax=2, kmin=2)(x).item() == pytest.approx(4.5 + (-1 + 1) / 2)
    assert WeldonPool2d(kmax=1, kmin=0)(x).item() == pytest.approx(5.0)
    assert WeldonPool2d(kmax=0.5, kmin=0)(x).item() == pytest.approx((5 + 4 + 3) / 3)  # 0.5 * 6 = 3 regions
    assert WeldonPool2d(kmax=3)(x).item() == pytest.approx(4.0 + 2.0 / 3)  # kmin defaults to kmax


@pytest.mark.parametrize(
    "k, n, expected",
    [
        (1, 10, 1), (1.0, 10, 1), (3, 10, 3), (3.0, 10, 3), (15, 10, 10),  # counts, clamped to n
        (0.2, 10, 2), (0.25, 10, 3), (0.35, 10, 4), (0.05, 10, 1),  # fractions, round half up
        (0.01, 10, 1), (0.999, 10, 10), (0.5, 3, 2), (0.5, 1, 1), (0, 10, 0),
    ],
)
def test_resolve_k(k, n, expected):
    assert resolve_k(k, n) == expected


@pytest.mark.parametrize(
    "shape, kmax, kmin, alpha",
    [
        ((2, 3, 4, 5), 1, 1, 1.0),
        ((2, 3, 4, 5), 3, 2, 0.7),
        ((1, 4, 7, 3), 0.2, 0.2, 1.0),
        ((3, 2, 6, 6), 0.1, 0.3, 0.5),
        ((2, 2, 5, 5), 100, 1, 1.0),
        ((2, 5, 1, 1), 2, 2, 1.0),
        ((1, 3, 9, 2), 4, 0, 1.0),
        ((2, 3, 4, 4), 0.5, None, 0.0),
    ],
)
def test_matches_naive_loop(shape, kmax, kmin, alpha):
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64)
    got = weldon_pool2d(x, kmax, kmin, alpha)
    expected = naive_weldon(x, kmax, kmax if kmin is None else kmin, alpha)
    assert got.shape == shape[:2]
    torch.testing.assert_close(got, expected)


def test_special_cases_equal_global_max_and_average_pooling():
    torch.manual_seed(1)
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(WeldonPool2d(1, 0)(x), F.adaptive_max_pool2d(x, 1).flatten(1))
    torch.testing.assert_close(WeldonPool2d(20, 0)(x), x.mean((2, 3)))
    torch.testing.assert_close(WeldonPool2d(3, 0)(x), WeldonPool2d(3, 3, alpha=0.0)(x))
    both = WeldonPool2d(1, 1)(x)
    torch.testing.assert_close(both, x.amax((2, 3)) + x.amin((2, 3)))


def test_gradients_reach_exactly_the_selected_regions():
    x = torch.tensor([[[[1.0, 5.0, 3.0], [2.0, -1.0, 4.0]]]], requires_grad=True)
    WeldonPool2d(kmax=2, kmin=1, alpha=0.5)(x).sum().backward()
    expected = torch.tensor([[[[0.0, 0.5, 0.0], [0.0, 0.5, 0.5]]]])
    torch.testing.assert_close(x.grad, expected)


def test_gradcheck():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, requires_grad=True)  # distinct values: no ties
    assert torch.autograd.gradcheck(lambda t: weldon_pool2d(t, 0.25, 2, 0.7), (x,))


@pytest.mark.parametrize(
    "kmax, kmin",
    [(0, 1), (-1, 1), (2.5, 1), (float("nan"), 1), (True, 1), ("3", 1), (1, -1), (1, 1.5)],
)
def test_bad_k_is_a_clear_error(kmax, kmin):
    with pytest.raises(ValueError, match="kmax|kmin"):
        WeldonPool2d(kmax, kmin)


def test_rejects_non_4d_input():
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        weldon_pool2d(torch.zeros(2, 3, 4), 1)


def test_class_wise_pool_averages_each_class_maps():
    x = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).view(2, 6, 2, 2)  # 3 classes x 2 maps
    out = ClassWisePool2d(2)(x)
    assert out.shape == (2, 3, 2, 2)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (x[:, 2 * c] + x[:, 2 * c + 1]) / 2)
    assert ClassWisePool2d(1)(x) is x
    with pytest.raises(ValueError, match="multiple"):
        ClassWisePool2d(4)(x)
    with pytest.raises(ValueError, match="num_maps"):
        ClassWisePool2d(0)


def test_class_map_head_then_pooling_end_to_end():
    torch.manual_seed(3)
    head = ClassMapHead(8, num_classes=5, maps_per_class=3)
    features = torch.randn(2, 8, 6, 7, requires_grad=True)
    maps = head(features)
    assert maps.shape == (2, 5, 6, 7)
    scores = WeldonPool2d(0.1, 0.1, alpha=0.7)(maps)
    assert scores.shape == (2, 5) and torch.isfinite(scores).all()
    scores.sum().backward()
    assert head.conv.weight.grad.abs().sum() > 0 and features.grad.abs().sum() > 0
