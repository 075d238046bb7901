"""segbench.nn.multiscale: multi-scale inputs with max fusion (DeepLab v2 MSC, Deep MIL's test-time scales)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.nn.multiscale import (
    max_over_scales,
    multiscale_max,
    multiscale_max_scores,
    rescale_images,
    resize_maps,
    scaled_size,
)

RAMP = torch.tensor([[0.0, 4.0], [8.0, 12.0]]).view(1, 1, 2, 2)  # v(r, c) = 8 r + 4 c


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def test_scale_one_alone_is_the_plain_forward():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    images = torch.randn(2, 3, 10, 14)
    fused, per_scale = multiscale_max(conv, images, [1.0])
    assert torch.equal(fused, conv(images)) and len(per_scale) == 1 and torch.equal(per_scale[0], fused)
    scores, per = multiscale_max_scores(lambda x: conv(x).amax((2, 3)), images, [1.0])
    assert torch.equal(scores, conv(images).amax((2, 3))) and len(per) == 1
    assert rescale_images(images, 1.0) is images


def test_max_fusion_by_hand_on_a_ramp():
    # scale 0.5: the 2x2 ramp shrinks to one pixel (bilinear, align_corners=False: the mean, 6), resized back: 6
    fused, per_scale = multiscale_max(identity, RAMP, [1.0, 0.5])
    assert per_scale[1].shape[-2:] == (1, 1) and per_scale[1].item() == 6.0
    assert fused[0, 0].tolist() == [[6.0, 6.0], [8.0, 12.0]]
    # scale 2: the ramp upsampled to 4x4 then downsampled to 2x2 samples it at r, c in {1/8, 7/8}:
    # 8 r + 4 c = [[1.5, 4.5], [7.5, 10.5]]; the max with scale 1 keeps the bottom row
    fused, per_scale = multiscale_max(identity, RAMP, [1.0, 2.0])
    assert per_scale[1].shape[-2:] == (4, 4)
    assert fused[0, 0].tolist() == [[1.5, 4.5], [8.0, 12.0]]
    fused, _ = multiscale_max(identity, RAMP, [2.0, 1.0, 0.5])  # order does not matter for the fused map
    assert fused[0, 0].tolist() == [[6.0, 6.0], [8.0, 12.0]]


def test_the_fused_size_is_the_scale_one_output_or_size():
    pool = nn.AvgPool2d(4)  # an output stride of 4
    images = torch.randn(2, 3, 32, 48)
    fused, per_scale = multiscale_max(pool, images, [0.5, 1.0, 0.75])
    assert fused.shape == (2, 3, 8, 12)
    assert [tuple(p.shape[-2:]) for p in per_scale] == [(4, 6), (8, 12), (6, 9)]  # each at its own size
    expected = torch.stack([resize_maps(p, (8, 12)) for p in per_scale]).amax(0)
    torch.testing.assert_close(fused, expected)
    assert multiscale_max(pool, images, [0.5, 1.0], size=(32, 48))[0].shape == (2, 3, 32, 48)
    assert multiscale_max(pool, images, [0.5, 0.75])[0].shape == (2, 3, 6, 9)  # no 1.0: the nearest scale
    nearest, _ = multiscale_max(pool, images, [1.0, 0.5], size=(16, 24), mode="nearest")
    assert nearest.shape == (2, 3, 16, 24)


def test_rescaling_follows_the_engine_conventions():
    images = torch.randn(1, 3, 21, 30)
    assert scaled_size((21, 30), 0.75) == (16, 22) and scaled_size((3, 3), 0.1, min_size=2) == (2, 2)
    expected = F.interpolate(images, size=(16, 22), mode="bilinear", align_corners=False)
    torch.testing.assert_close(rescale_images(images, 0.75), expected)
    smooth = F.interpolate(images, size=(16, 22), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(rescale_images(images, 0.75, antialias=True), smooth)
    assert rescale_images(images, 0.01, min_size=4).shape[-2:] == (4, 4)


def test_image_level_scores_take_the_max_over_scales():
    images = RAMP.expand(1, 3, 2, 2)
    scores, per_scale = multiscale_max_scores(lambda x: x.amin((2, 3)), images, [1.0, 0.5])
    assert per_scale[0].tolist() == [[0.0] * 3] and per_scale[1].tolist() == [[6.0] * 3]
    assert scores.tolist() == [[6.0] * 3]
    assert torch.equal(max_over_scales([torch.tensor([1.0, 5.0]), torch.tensor([3.0, 2.0])]), torch.tensor([3.0, 5.0]))


def test_gradients_reach_every_scale_in_training():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 2, 3, padding=1)
    images = torch.randn(2, 3, 16, 16)
    inputs = []  # each scale's (rescaled) input, a leaf: its .grad is that scale's share of the gradient

    def forward(x):
        x = x.detach().requires_grad_(True)
        inputs.append(x)
        return conv(x)

    fused, per_scale = multiscale_max(forward, images, [1.0, 0.75, 0.5])
    (fused.sum() + sum(p.sum() for p in per_scale)).backward()  # a loss per scale plus one on the fused map
    grads = [x.grad for x in inputs]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    # the fused map alone sends gradient to each scale where it holds the maximum
    inputs.clear()
    conv.zero_grad()
    fused, per_scale = multiscale_max(forward, images, [1.0, 0.75, 0.5])
    fused.sum().backward()
    resized = torch.stack([resize_maps(p, fused.shape[-2:]) for p in per_scale])
    winners = resized.argmax(0)
    for i, x in enumerate(inputs):
        assert (winners == i).any() == (x.grad.abs().sum() > 0)


@pytest.mark.parametrize("scales", [[], [0.0], [-1.0], "1", [float("nan")], [True]])
def test_bad_scales_are_refused(scales):
    with pytest.raises(ValueError, match="scales must be a non-empty list of positive numbers"):
        multiscale_max(identity, RAMP, scales)
