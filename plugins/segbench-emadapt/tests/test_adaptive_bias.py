"""The EM-Adapt E-step: adaptive biases on hand-made score maps, and against a per-image reference loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segbench_emadapt.adaptive_bias import _visit_order, adaptive_biases, latent_segmentation, target_counts

RAMP = (torch.arange(100, dtype=torch.float32) + 1).view(10, 10) * 0.01  # 0.01 .. 1.00 over 10x10 pixels


def counts(labels: torch.Tensor, c: int) -> list[int]:
    return torch.bincount(labels.flatten(), minlength=c).tolist()


def present(*classes: int, c: int = 4) -> torch.Tensor:
    mask = torch.zeros(1, c, dtype=torch.bool)
    mask[0, list(classes)] = True
    return mask


def test_target_counts_are_the_ceiling_of_the_share():
    assert target_counts(100, 0.2, 0.4) == (20, 40)
    assert target_counts(64, 0.2, 0.4) == (13, 26)  # 12.8 -> 13, 25.6 -> 26
    assert target_counts(10, 0.01, 0.99) == (1, 10)


def test_a_present_class_is_boosted_to_exactly_its_share_and_absent_classes_get_nothing():
    """bg = 0, class 3 = -0.01 .. -1.00: bg wins all 100 pixels (no bias); class 3 needs the 20th smallest gap,
    0.20, and then wins the 20 pixels where its score is highest. Class 1 scores 5 everywhere but is absent."""
    scores = torch.zeros(1, 4, 10, 10)
    scores[0, 1] = 5.0
    scores[0, 3] = -RAMP
    biases = adaptive_biases(scores, present(3), shuffle=False)
    torch.testing.assert_close(biases, torch.tensor([[0.0, 0.0, 0.0, 0.2]]), atol=1e-3, rtol=0)
    labels = latent_segmentation(scores, present(3), shuffle=False)
    assert counts(labels, 4) == [80, 0, 0, 20]
    assert (labels[0].flatten()[:20] == 3).all()  # the 20 pixels with the smallest gaps


def test_the_background_is_boosted_to_its_share_first():
    """Class 2 = 0 everywhere wins all pixels; bg = -0.01 .. -1.00 needs +0.40 to win 40 of them; class 2 keeps
    60 pixels, more than its 20 % share, so it gets no bias."""
    scores = torch.zeros(1, 4, 10, 10)
    scores[0, 0] = -RAMP
    biases = adaptive_biases(scores, present(2), shuffle=False)
    torch.testing.assert_close(biases, torch.tensor([[0.4, 0.0, 0.0, 0.0]]), atol=1e-3, rtol=0)
    assert counts(latent_segmentation(scores, present(2), shuffle=False), 4) == [40, 0, 60, 0]


def test_a_later_class_takes_pixels_from_an_earlier_one():
    """Two present classes that both score -0.01 .. -1.00 against bg = 0: class 1 takes the 20 best pixels with a
    bias of 0.20, then class 2 (same scores) needs 0.20 plus class 1's tolerance and takes all 20 back. Only the
    last class visited is sure to have its share (as in the reference layer); here every sweep ends the same."""
    scores = torch.zeros(1, 3, 10, 10)
    scores[0, 1] = -RAMP
    scores[0, 2] = -RAMP
    for sweeps in (1, 2):
        labels = latent_segmentation(scores, present(1, 2, c=3), shuffle=False, sweeps=sweeps)
        assert counts(labels, 3) == [80, 0, 20]
    biases = adaptive_biases(scores, present(1, 2, c=3), shuffle=False)
    torch.testing.assert_close(biases, torch.tensor([[0.0, 0.2, 0.2]]), atol=1e-3, rtol=0)
    assert biases[0, 2] > biases[0, 1]


def test_only_background_and_no_background():
    scores = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    labels = latent_segmentation(scores, torch.zeros(2, 4, dtype=torch.bool))
    assert (labels == 0).all()  # nothing present but the background: every pixel is background
    labels = latent_segmentation(scores, torch.zeros(2, 4, dtype=torch.bool), background=None)
    assert torch.equal(labels, scores.argmax(1))  # no label at all, no background: the plain argmax
    only = torch.tensor([[False, True, False, True]] * 2)
    labels = latent_segmentation(scores, only, background=None, shuffle=False)
    assert set(labels.unique().tolist()) <= {1, 3}
    assert (labels[1] == 3).sum() >= math.ceil(0.2 * 36)  # the last class visited always has its share


def test_allowed_classes_may_win_without_a_bias():
    """Class 2 is 'difficult' (allowed, not present): it wins where it scores highest, is never boosted."""
    scores = torch.zeros(1, 3, 10, 10)
    scores[0, 2] = -1.0
    scores[0, 2, 0, :5] = 1.0  # 5 pixels where class 2 is on top
    allowed = present(2, c=3)
    labels = latent_segmentation(scores, present(c=3), allowed=allowed)
    assert counts(labels, 3) == [95, 0, 5]
    assert counts(latent_segmentation(scores, present(c=3)), 3) == [100, 0, 0]  # not allowed: suppressed


def test_a_shift_per_pixel_does_not_change_the_latent_segmentation():
    """Biases act on log-probabilities; logits differ from them by a per-pixel constant, which changes nothing."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 5, 7, 9, generator=g) * 3
    labels = torch.rand(3, 5, generator=g) > 0.5
    a = latent_segmentation(logits.log_softmax(1), labels, shuffle=False)
    b = latent_segmentation(logits, labels, shuffle=False)
    assert (a == b).float().mean() > 0.98  # equal up to the kth-pixel ties that the tolerance settles


def reference_biases(scores: np.ndarray, labels: list[int], background: int | None, fg: float, bg: float,
                     sweeps: int) -> np.ndarray:
    """A per-image port of the reference layer's loop (float64, fixed order, k = ceil(share * n), no tolerance)."""
    c, n = scores.shape
    present = sorted(set(labels) | ({background} if background is not None else set()))
    biases = np.zeros(c)
    if not present:
        return biases
    top = scores[present].max(0)
    order = ([background] if background is not None else []) + [l for l in present if l != background]
    for _ in range(sweeps):
        for label in order:
            share = bg if label == background else fg
            k = min(max(math.ceil(share * n - 1e-9), 1), n)
            gap = np.maximum(top - (scores[label] + biases[label]), 0)
            kth = np.sort(gap)[k - 1]
            biases[label] += kth
            top = np.maximum(top, scores[label] + biases[label])
    return biases


@pytest.mark.parametrize("background, sweeps", [(0, 1), (0, 3), (None, 1), (2, 2)])
def test_the_batched_biases_match_a_per_image_reference_loop(background, sweeps):
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(6, 5, 8, 12, generator=g).log_softmax(1)
    labels = torch.rand(6, 5, generator=g) > 0.6
    labels[0] = False  # an image with no foreground label
    batched = adaptive_biases(scores, labels, background=background, sweeps=sweeps, shuffle=False)
    for i in range(6):
        classes = labels[i].nonzero().flatten().tolist()
        expected = reference_biases(scores[i].flatten(1).double().numpy(), classes, background, 0.2, 0.4, sweeps)
        np.testing.assert_allclose(batched[i].numpy(), expected, atol=2e-4 * sweeps * 5)
        alone = adaptive_biases(scores[i:i + 1], labels[i:i + 1], background=background, sweeps=sweeps,
                                shuffle=False)
        torch.testing.assert_close(batched[i:i + 1], alone)  # an image's biases do not depend on its batch


def test_visit_order_background_first_then_present_classes_shuffled():
    labels = torch.tensor([[False, True, False, True, True]] * 50)
    order = _visit_order(labels | torch.tensor([True, False, False, False, False]), 0, True,
                         torch.Generator().manual_seed(0))
    assert (order[:, 0] == 0).all()
    assert all(set(row[1:4].tolist()) == {1, 3, 4} and set(row[4:].tolist()) == {2} for row in order)
    assert len({tuple(row.tolist()) for row in order}) == 6  # every order of the 3 foreground classes occurs
    fixed = _visit_order(labels, None, False, None)
    assert fixed[0].tolist() == [1, 3, 4, 0, 2]


def test_shuffled_e_step_is_reproducible_with_a_generator():
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(4, 5, 6, 6, generator=g)
    labels = torch.rand(4, 5, generator=g) > 0.4
    a = latent_segmentation(scores, labels, generator=torch.Generator().manual_seed(1))
    b = latent_segmentation(scores, labels, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        adaptive_biases(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="present must be"):
        adaptive_biases(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, dtype=torch.bool))
