"""U-Net's weight map (segbench.nn.weight_map) against eq. 2 of Ronneberger et al. 2015, computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segbench.nn.weight_map import border_distances, cells, class_balance, unet_weight_map, weighted_pixel_loss


def border(d1: float, d2: float, w0: float = 10.0, sigma: float = 5.0) -> float:
    return w0 * math.exp(-((d1 + d2) ** 2) / (2 * sigma**2))


def two_dots() -> torch.Tensor:
    """5 x 7 background with two one-pixel cells (class 1) at (2, 1) and (2, 5)."""
    mask = torch.zeros(5, 7, dtype=torch.int64)
    mask[2, 1] = mask[2, 5] = 1
    return mask


def test_two_cells_by_hand():
    w = unet_weight_map(two_dots())
    bg, fg = 35 / (2 * 33), 35 / (2 * 2)  # w_c = N / (K n_c): 35 labelled pixels, 2 classes, 33 and 2 pixels
    # (2, 3): midway, d1 = d2 = 2
    assert w[2, 3].item() == pytest.approx(bg + 10 * math.exp(-16 / 50), rel=1e-6)
    # (0, 3): d1 = d2 = sqrt(8), (d1 + d2)^2 = 32
    assert w[0, 3].item() == pytest.approx(bg + 10 * math.exp(-32 / 50), rel=1e-6)
    # (0, 0): d1 = sqrt(2^2 + 1^2), d2 = sqrt(2^2 + 5^2)
    assert w[0, 0].item() == pytest.approx(bg + border(math.sqrt(5), math.sqrt(29)), rel=1e-6)
    # (2, 2): next to the left cell, d1 = 1, d2 = 3
    assert w[2, 2].item() == pytest.approx(bg + 10 * math.exp(-16 / 50), rel=1e-6)
    # cells: the border term is for background pixels only
    assert w[2, 1].item() == pytest.approx(fg) and w[2, 5].item() == pytest.approx(fg)


def test_parameters_w0_and_sigma():
    w = unet_weight_map(two_dots(), w0=3.0, sigma=2.0, class_weights=None)
    assert w[2, 3].item() == pytest.approx(1 + 3 * math.exp(-16 / 8), rel=1e-6)
    assert torch.equal(unet_weight_map(two_dots(), w0=0.0), unet_weight_map(two_dots(), w0=0.0, sigma=1.0))
    assert torch.allclose(unet_weight_map(two_dots(), w0=0.0), torch.from_numpy(class_balance(two_dots())).float())


def test_class_balance_by_hand_mean_one_and_void_zero():
    mask = torch.tensor([[0, 0, 0, 1], [0, 0, 2, 255]])
    wc = class_balance(mask)  # 7 labelled, 3 classes: 7 / (3 * n_c)
    expected = np.array([[7 / 15, 7 / 15, 7 / 15, 7 / 3], [7 / 15, 7 / 15, 7 / 3, 0.0]])
    np.testing.assert_allclose(wc, expected)
    assert wc[mask != 255].mean() == pytest.approx(1.0)
    np.testing.assert_allclose(class_balance(mask, None), (mask != 255).numpy().astype(float))
    np.testing.assert_allclose(class_balance(mask, [1.0, 2.0, 3.0]), [[1, 1, 1, 2], [1, 1, 3, 0]])
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 4, (20, 30), generator=g)
    rand[:3] = 255
    assert class_balance(rand)[rand != 255].mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="class_weights"):
        class_balance(mask, "median")


def test_void_pixels_weigh_zero_even_between_cells():
    mask = two_dots()
    mask[2, 3] = 255
    w = unet_weight_map(mask)
    assert w[2, 3].item() == 0.0
    assert w[0, 3].item() == pytest.approx(34 / (2 * 32) + 10 * math.exp(-32 / 50), rel=1e-6)
    assert torch.count_nonzero(unet_weight_map(torch.full((4, 4), 255))) == 0


def test_fewer_than_two_cells_have_no_border_term():
    one = torch.zeros(5, 7, dtype=torch.int64)
    one[2, 1] = 1
    torch.testing.assert_close(unet_weight_map(one), torch.from_numpy(class_balance(one)).float())
    empty = torch.zeros(3, 3, dtype=torch.int64)
    torch.testing.assert_close(unet_weight_map(empty), torch.ones(3, 3))
    d1, d2 = border_distances(cells(one))
    assert d1[2, 3] == 2.0 and np.isinf(d2).all()


def test_instance_masks_separate_touching_cells_of_one_class():
    mask = torch.zeros(3, 6, dtype=torch.int64)
    mask[1, 1:5] = 1  # one 4-connected strip: one cell from the semantic mask
    assert len(cells(mask)) == 1
    instances = torch.zeros(3, 3, 6, dtype=torch.bool)
    instances[0, 1, 1:3] = True
    instances[1, 1, 3:5] = True  # two touching instances; the third is empty (cropped away) and skipped
    assert len(cells(mask, instances)) == 2
    w_sem, w_inst = unet_weight_map(mask), unet_weight_map(mask, instances)
    bg = 18 / (2 * 14)
    assert w_sem[1, 0].item() == pytest.approx(bg)
    assert w_inst[1, 0].item() == pytest.approx(bg + border(1.0, 3.0), rel=1e-6)  # d1 = 1, d2 = 3
    assert w_inst[0, 0].item() == pytest.approx(bg + border(math.sqrt(2), math.sqrt(10)), rel=1e-6)


def test_components_are_per_class_and_4_connected():
    mask = torch.tensor([[1, 0, 2], [0, 1, 2], [0, 0, 0]])
    cs = cells(mask)  # the two diagonal 1s are separate cells; the 2s one cell; void and background none
    assert len(cs) == 3 and sorted(int(c.sum()) for c in cs) == [1, 1, 2]
    assert len(cells(torch.tensor([[255, 0], [0, 0]]))) == 0


def test_distances_match_brute_force():
    g = torch.Generator().manual_seed(3)
    mask = (torch.rand(9, 11, generator=g) > 0.85).long()
    cs = cells(mask)
    assert len(cs) >= 3
    d1, d2 = border_distances(cs)
    yy, xx = np.mgrid[:9, :11]
    per_cell = np.stack([np.min(np.hypot(yy[..., None] - yy[c], xx[..., None] - xx[c]), axis=-1) for c in cs])
    per_cell.sort(axis=0)
    np.testing.assert_allclose(d1, per_cell[0])
    np.testing.assert_allclose(d2, per_cell[1])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_shape_dtype_device(dtype):
    mask = two_dots().to(dtype)
    w = unet_weight_map(mask)
    assert w.shape == (5, 7) and w.dtype == torch.float32 and w.device == mask.device
    assert (w >= 0).all() and torch.isfinite(w).all()


def test_weighted_pixel_loss_by_hand():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=g)
    masks = torch.randint(0, 3, (2, 4, 5), generator=g)
    masks[0, 0] = 255
    weights = torch.rand(2, 4, 5, generator=g)
    keep = masks != 255
    ce = -logits.log_softmax(1).gather(1, masks.clamp(max=2)[:, None])[:, 0]
    by_hand = (weights * ce)[keep].sum()
    torch.testing.assert_close(weighted_pixel_loss(logits, masks, weights), by_hand / keep.sum())
    torch.testing.assert_close(weighted_pixel_loss(logits, masks, weights, normalize="weights"),
                               by_hand / weights[keep].sum())
    torch.testing.assert_close(weighted_pixel_loss(logits, masks, torch.ones(2, 4, 5)),
                               F.cross_entropy(logits, masks, ignore_index=255))
    assert weighted_pixel_loss(logits, torch.full_like(masks, 255), weights).item() == 0.0
