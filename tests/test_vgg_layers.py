"""segbench.nn.vgg: atrous VGG (strides, pools, dilations), the LargeFOV head, VGG's fc6/fc7 as convolutions, and
ImageNet fc6/fc7 copied whole or decimated (checked by hand on tiny tensors)."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from torch import nn

from segbench.nn.vgg import (
    VGGFC,
    AtrousConv2d,
    LargeFOVHead,
    atrous_vgg,
    copy_classifier,
    decimate_classifier,
    is_vgg,
    load_largefov_classifier,
    load_vgg_classifier,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def vgg(name: str = "vgg16", **kwargs) -> nn.Module:
    import timm

    return timm.create_model(name, pretrained=False, features_only=True, **kwargs)


def geometry(model: nn.Module) -> tuple[list[tuple[int, int]], list[int]]:
    """(kernel, stride) of every max-pool and the dilation of every 3x3 convolution, in order."""
    pools = [(m.kernel_size, m.stride) for m in model.children() if isinstance(m, nn.MaxPool2d)]
    dilations = [m.dilation[0] for m in model.children() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]
    return pools, dilations


def test_is_vgg():
    assert is_vgg("vgg16") and is_vgg("vgg19_bn.tv_in1k") and not is_vgg("resnet50") and not is_vgg("test_vgg")


@pytest.mark.parametrize("stride, pools, dilations", [
    (8, [(2, 2)] * 3 + [(3, 1)] * 2, [1] * 10 + [2] * 3),  # DeepLab-LargeFOV: pool4/pool5 stride 1, conv5 rate 2
    (16, [(2, 2)] * 4 + [(3, 1)], [1] * 13),  # only pool5 keeps the size; no convolution after it
    (32, [(2, 2)] * 5, [1] * 13),  # timm's VGG as it is
])
def test_atrous_vgg16_pools_and_dilations(stride, pools, dilations):
    with torch.device("meta"):
        model = vgg()
    atrous_vgg(model, stride)
    assert geometry(model) == (pools, dilations)
    convs = [m for m in model.children() if isinstance(m, nn.Conv2d)]
    assert all(c.padding[0] == c.dilation[0] for c in convs)  # 3x3 convolutions keep the size


def test_atrous_vgg_output_strides_and_switching_back():
    torch.manual_seed(0)
    model = vgg("vgg11").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        atrous_vgg(model, 8)
        at8 = model(x)
        assert [tuple(f.shape[-2:]) for f in at8] == [(64, 96), (32, 48), (16, 24), (8, 12), (8, 12), (8, 12)]
        atrous_vgg(model, 16)
        assert model(x)[-1].shape[-2:] == (4, 6)
        atrous_vgg(model, 32)
        assert model(x)[-1].shape[-2:] == (2, 3)
        atrous_vgg(model, 8)  # the same weights, the stride-8 network again
        torch.testing.assert_close(model(x)[-1], at8[-1])


def test_atrous_vgg_cut_before_pool5_is_converted_as_far_as_it_goes():
    model = vgg("vgg11", out_indices=(4,)).eval()  # conv5 (stride 16 in timm)
    atrous_vgg(model, 8)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))[-1].shape == (1, 512, 8, 8)


def test_atrous_conv_keeps_the_size_and_rescales_its_rate():
    conv = AtrousConv2d(4, 6, 3, 12)
    assert conv.dilation == (12, 12) and conv.padding == (12, 12) and conv.rate == 12
    assert conv(torch.randn(1, 4, 9, 11)).shape == (1, 6, 9, 11)
    conv.set_scale(0.5)
    assert conv.dilation == (6, 6) and conv.padding == (6, 6) and conv.rate == 12


def test_largefov_head_shapes():
    head = LargeFOVHead(16, 5, channels=8, kernel_size=3, rate=12, dropout=0.5).eval()
    assert head.fc6.dilation == (12, 12) and head.fc6.weight.shape == (8, 16, 3, 3)
    assert head.fc7.weight.shape == (8, 8, 1, 1) and head.fc8.weight.shape == (5, 8, 1, 1)
    assert isinstance(head.pool5a, nn.AvgPool2d) and head.pool5a.stride == 1 and head.pool5a.kernel_size == 3
    assert torch.equal(head.fc8.bias, torch.zeros(5)) and head.fc8.weight.std() < 0.05  # N(0, 0.01)
    assert head(torch.randn(2, 16, 9, 11)).shape == (2, 5, 9, 11)  # the size of pool5 is kept
    plain = LargeFOVHead(16, 5, channels=8, pool5a=False)
    assert isinstance(plain.pool5a, nn.Identity)


def test_vgg_fc_keeps_the_map_size():
    fc = VGGFC(8, channels=16, kernel_size=7, dropout=0.5).eval()
    assert fc.fc6.weight.shape == (16, 8, 7, 7) and fc.fc6.padding == (3, 3) and fc.out_channels == 16
    assert fc.fc7.weight.shape == (16, 16, 1, 1)
    out = fc(torch.randn(1, 8, 2, 3))
    assert out.shape == (1, 16, 2, 3) and (out >= 0).all()  # ReLU after fc7
    defaults = inspect.signature(VGGFC).parameters
    assert [defaults[k].default for k in ("in_channels", "channels", "kernel_size")] == [512, 4096, 7]  # ImageNet's


def numbered(conv: nn.Conv2d) -> nn.Conv2d:
    """Weights 0, 1, 2, ... in storage order, biases 1000 + filter index: every copied value says where it came
    from."""
    with torch.no_grad():
        conv.weight.copy_(torch.arange(conv.weight.numel(), dtype=torch.float32).view_as(conv.weight))
        conv.bias.copy_(1000 + torch.arange(conv.out_channels, dtype=torch.float32))
    return conv


def test_decimation_keeps_every_fourth_filter_and_taps_0_3_6_of_the_7x7_kernel():
    """8 source filters -> 2: filters 0 and 4 (every 8/2 = 4th); 7x7 -> 3x3: taps 0, 3, 6 on each axis, as DeepLab v1
    turns VGG's 4096 x 7 x 7 fc6 into LargeFOV's 1024 x 3 x 3."""
    fc1, fc2 = numbered(nn.Conv2d(2, 8, 7)), numbered(nn.Conv2d(8, 8, 1))
    fc6, fc7 = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1)
    assert decimate_classifier(fc6, fc7, fc1, fc2)
    # fc1.weight[o, i, y, x] = o * 98 + i * 49 + y * 7 + x (2 x 7 x 7 = 98 values per filter)
    assert fc6.weight[0, 0].tolist() == [[0, 3, 6], [21, 24, 27], [42, 45, 48]]
    assert fc6.weight[1, 1, 2, 1].item() == 4 * 98 + 1 * 49 + 6 * 7 + 3 * 1  # filter 4, input 1, tap (6, 3)
    assert fc6.bias.tolist() == [1000, 1004]
    # fc2.weight[o, i] = o * 8 + i: outputs and inputs both 0 and 4
    assert fc7.weight[:, :, 0, 0].tolist() == [[0, 4], [32, 36]]
    assert fc7.bias.tolist() == [1000, 1004]


def test_decimation_taps_for_other_kernel_sizes_and_refusals():
    fc1, fc2 = numbered(nn.Conv2d(1, 4, 7)), numbered(nn.Conv2d(4, 4, 1))
    fc6, fc7 = nn.Conv2d(1, 4, 4), nn.Conv2d(4, 4, 1)
    assert decimate_classifier(fc6, fc7, fc1, fc2)  # all 4 filters kept, taps 0, 2, 4, 6
    assert fc6.weight[0, 0, 0].tolist() == [0, 2, 4, 6] and torch.equal(fc7.weight, fc2.weight)
    for target6, target7 in [(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 3, 1)),  # 3 does not divide 4
                             (nn.Conv2d(1, 2, 9), nn.Conv2d(2, 2, 1)),  # 9x9 kernel from a 7x7
                             (nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1))]:  # 2 input channels, the source has 1
        before = target6.weight.clone()
        assert not decimate_classifier(target6, target7, fc1, fc2)
        assert torch.equal(target6.weight, before)


def test_copy_classifier_copies_when_the_shapes_match_only():
    fc1, fc2 = numbered(nn.Conv2d(3, 6, 7)), numbered(nn.Conv2d(6, 6, 1))
    fc6, fc7 = nn.Conv2d(3, 6, 7, padding=3), nn.Conv2d(6, 6, 1)
    assert copy_classifier(fc6, fc7, fc1, fc2)
    assert torch.equal(fc6.weight, fc1.weight) and torch.equal(fc7.bias, fc2.bias)
    other = nn.Conv2d(3, 6, 3)
    before = other.weight.clone()
    assert not copy_classifier(other, fc7, fc1, fc2) and torch.equal(other.weight, before)


class Classifier(nn.Module):
    """Stands in for timm's VGG: ``pre_logits.fc1`` / ``fc2`` as convolutions."""

    def __init__(self, in_channels: int, width: int, kernel: int) -> None:
        super().__init__()
        self.pre_logits = nn.Module()
        self.pre_logits.fc1 = numbered(nn.Conv2d(in_channels, width, kernel))
        self.pre_logits.fc2 = numbered(nn.Conv2d(width, width, 1))


def test_loaders_read_timms_classifier_from_the_given_file(monkeypatch):
    import timm

    calls = []
    fake = Classifier(2, 4096, 3)

    def create_model(name, pretrained=False, **options):
        calls.append((name, pretrained, options))
        return fake

    monkeypatch.setattr(timm, "create_model", create_model)
    fc6, fc7 = nn.Conv2d(2, 16, 3), nn.Conv2d(16, 16, 1)
    assert load_largefov_classifier(fc6, fc7, "vgg16", "vgg.pth")
    assert calls == [("vgg16", True, {"pretrained_cfg_overlay": {"file": "vgg.pth"}})]
    torch.testing.assert_close(fc6.weight[1], fake.pre_logits.fc1.weight[256])  # every 4096/16 = 256th filter
    torch.testing.assert_close(fc7.weight[1, 2], fake.pre_logits.fc2.weight[256, 512])
    whole6, whole7 = nn.Conv2d(2, 4096, 3, padding=1), nn.Conv2d(4096, 4096, 1)
    assert load_vgg_classifier(whole6, whole7, "vgg16", "vgg.pth")
    assert torch.equal(whole6.weight, fake.pre_logits.fc1.weight) and torch.equal(whole7.weight,
                                                                                  fake.pre_logits.fc2.weight)
    calls.clear()
    assert not load_largefov_classifier(nn.Conv2d(2, 1000, 3), nn.Conv2d(1000, 1000, 1), "vgg16", "vgg.pth")
    assert calls == []  # 1000 does not divide 4096: ImageNet VGG is not even read
