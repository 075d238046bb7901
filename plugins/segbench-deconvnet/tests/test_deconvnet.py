"""Tests of the DeconvNet plugin: registration, timm VGG reuse, pooling switches, shapes, loss, options."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.engine.config import TrainConfig
from segbench.errors import ConfigError
from segbench_deconvnet import OPTIONS, method_specs
from segbench_deconvnet.model import DeconvNet, vgg_config

C = 5
TINY = {"width": 0.125, "fc_channels": 16, "fc_kernel": 3}


def tiny(seed: int = 0, **options) -> DeconvNet:
    torch.manual_seed(seed)
    return DeconvNet(C, **{**TINY, **options})


def batch(b: int = 2, h: int = 64, w: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    targets = [{"mask": torch.randint(0, C, (h, w), generator=g)} for _ in range(b)]
    return images, targets


# -- registration ----------------------------------------------------------------------
def test_registers_through_the_entry_point():
    from segbench.plugins import Registry

    spec = Registry().load().methods["deconvnet"]
    spec.validate()
    assert spec.plugin == "deconvnet" and spec.supervision == "pixel"
    assert spec.outputs == {"mask", "score_maps", "scores"}
    assert set(spec.recipes) == {"quick", "bench", "paper"} and spec.options == OPTIONS
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for recipe in spec.recipes.values():
        assert set(recipe.train) <= train_keys, set(recipe.train) - train_keys
    paper = spec.recipes["paper"]
    assert paper.model["backbone"] == "vgg16_bn" and paper.model["pretrained"] is True
    assert paper.train["crop_size"] == 224 and paper.train["lr"] == 0.01 and paper.train["batch_size"] == 64
    assert paper.model["final_relu"] is True and paper.model["fc_kernel"] == 7


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, segbench_deconvnet; segbench_deconvnet.method_specs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the convolution network is timm's VGG ---------------------------------------------------
def test_convolution_network_is_timm_vgg16_bn_with_index_returning_pools():
    from timm.models.vgg import cfgs

    model = DeconvNet(C, width=0.25, fc_channels=8, fc_kernel=3)  # VGG16's 13 convolutions at 1/4 width
    convs = [m for stage in model.stages for m in stage if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [v // 4 for v in cfgs["vgg16"] if v != "M"]
    assert all(isinstance(stage[1], nn.BatchNorm2d) for stage in model.stages)
    assert len(model.pools) == 5 and all(p.return_indices and p.kernel_size == 2 for p in model.pools)
    assert not any(isinstance(m, nn.MaxPool2d) and not m.return_indices for m in model.modules())
    # the mirror: deconv channels reversed per stage, ending with 64 (not 3) channels before the score
    deconvs = [seq[0] for stage in model.deconvs for seq in stage]
    assert all(isinstance(d, nn.ConvTranspose2d) and d.kernel_size == (3, 3) for d in deconvs)
    assert [(d.in_channels, d.out_channels) for d in model.deconvs[2].children() for d in [d[0]]] == [
        (64, 64), (64, 64), (64, 32)]
    assert (model.deconvs[0][-1][0].out_channels, model.score.in_channels) == (16, 16)
    assert isinstance(model.fc6_deconv[0], nn.ConvTranspose2d) and model.fc6_deconv[0].out_channels == 128


def test_final_relu_option_removes_only_the_last_relu():
    with_relu, without = tiny(), tiny(final_relu=False)
    relus = lambda m: sum(isinstance(x, nn.ReLU) for x in m.modules())  # noqa: E731
    assert relus(with_relu) - relus(without) == 1
    assert isinstance(with_relu.deconvs[0][-1][2], nn.ReLU) and isinstance(without.deconvs[0][-1][2], nn.Identity)
    images, _ = batch(1, 32, 32)
    with torch.no_grad():
        assert without.eval()(images).shape == (1, C, 32, 32)


def test_width_and_depth_scale_the_timm_configuration():
    assert vgg_config("vgg16_bn", 0.125, 5) == [8, 8, "M", 16, 16, "M", 32, 32, 32, "M", 64, 64, 64, "M",
                                               64, 64, 64, "M"]
    assert vgg_config("vgg11_bn", 0.5, 3) == [32, "M", 64, "M", 128, 128, "M"]
    model = tiny(backbone="vgg11_bn", depth=3)
    assert len(model.stages) == len(model.unpools) == len(model.deconvs) == 3
    assert model.fc6[0].in_channels == 32


# -- switches ---------------------------------------------------------------------------------
def test_unpooling_uses_the_pooling_switches():
    """Each unpooled map is zero except at the argmax of every 2x2 pooling window of the encoder."""
    model = tiny().eval()
    pooled_from, unpool_io = {}, {}
    for s, (stage, unpool) in enumerate(zip(model.stages, model.unpools)):
        stage.register_forward_hook(lambda m, i, o, s=s: pooled_from.__setitem__(s, o.detach().clone()))
        unpool.register_forward_hook(lambda m, i, o, s=s: unpool_io.__setitem__(s, (i[0], o)))
    images, _ = batch(2, 64, 80)
    with torch.no_grad():
        model(images)
    checked = 0
    for s in range(5):
        features = pooled_from[s]  # what pool s saw
        x, unpooled = unpool_io[s]  # what unpool s received and produced
        assert unpooled.shape == features.shape
        b, c, h, w = features.shape
        windows = F.unfold(features.reshape(b * c, 1, h, w), 2, stride=2)  # [b*c, 4, h/2 * w/2]
        top, where = windows.max(dim=1)
        unique = (windows == top[:, None]).sum(dim=1) == 1  # windows with one maximum (no ReLU ties at 0)
        positions = F.unfold(torch.arange(h * w, dtype=torch.float32).reshape(1, 1, h, w), 2, stride=2)[0]
        argmax = positions.gather(0, where).long()  # flat position of each window's maximum
        flat_unpooled = unpooled.reshape(b * c, h * w)
        flat_x = x.reshape(b * c, -1)
        at_argmax = flat_unpooled.gather(1, argmax)
        assert torch.equal(at_argmax[unique], flat_x[unique])
        allowed = torch.zeros_like(flat_unpooled)  # every maximum of its window (ties included)
        for k in range(4):
            allowed.scatter_add_(1, positions[k].long().expand(b * c, -1), (windows[:, k] == top).float())
        assert not flat_unpooled[allowed == 0].any(), "unpooled values outside the switch positions"
        assert unique.float().mean() > 0.3
        checked += int(unique.sum())
    assert checked > 1000


def test_odd_sizes_unpool_to_the_pooled_size():
    model = tiny().eval()
    sizes = []
    for unpool in model.unpools:
        unpool.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        out = model(batch(1, 50, 70)[0])
    assert out.shape == (1, C, 50, 70)
    assert sizes == [(3, 4), (6, 8), (12, 17), (25, 35), (50, 70)]  # floor-pooled rows come back as zeros


def test_fc6_is_unpadded_on_large_maps_and_small_maps_are_padded_to_the_kernel():
    model = tiny(fc_kernel=7).eval()
    shapes = []
    model.fc6.register_forward_hook(lambda m, i, o: shapes.append((tuple(i[0].shape[-2:]), tuple(o.shape[-2:]))))
    with torch.no_grad():
        assert model(batch(1, 224, 256)[0]).shape == (1, C, 224, 256)  # pool5 7x8 -> fc6 1x2 (the paper: 1x1)
        assert model(batch(1, 64, 96)[0]).shape == (1, C, 64, 96)  # pool5 2x3 zero-padded to 7x7 -> 1x1
    assert shapes == [((7, 8), (1, 2)), ((7, 7), (1, 1))]


# -- predict and loss ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [(64, 64), (56, 72), (33, 47)])
def test_predict_keys_shapes_dtypes(size):
    model = tiny().eval()
    predictions = model.predict(batch(2, *size)[0])
    for p in predictions:
        assert set(p) == {"mask", "score_maps", "scores"}
        assert p["score_maps"].shape == (C, *size) and p["mask"].shape == size and p["mask"].dtype == torch.int64
        torch.testing.assert_close(p["score_maps"].sum(0), torch.ones(size))
        assert torch.equal(p["mask"], p["score_maps"].argmax(0))
        torch.testing.assert_close(p["scores"], p["score_maps"].amax(dim=(1, 2)))


def test_loss_is_cross_entropy_over_labelled_pixels_and_reaches_every_parameter():
    model = tiny().eval()
    images, targets = batch(2, 48, 64)
    targets[1]["mask"][:, :20] = 255
    with torch.no_grad():
        logits = model(images)
    masks = torch.stack([t["mask"] for t in targets])
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(model.loss(images, targets)["loss"], expected)
    loss = model.train().loss(images, targets)["loss"]
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.score.weight.grad.abs().sum() > 0 and model.stages[0][0].weight.grad.abs().sum() > 0


def test_all_void_target_gives_zero_loss():
    model = tiny().train()
    targets = [{"mask": torch.full((32, 32), 255, dtype=torch.int64)} for _ in range(2)]
    assert model.loss(batch(2, 32, 32)[0], targets)["loss"].item() == 0.0


# -- pretrained weights -------------------------------------------------------------------------
def test_pretrained_path_takes_timm_weights_and_the_classifier(monkeypatch, tmp_path):
    import timm
    from timm.models.vgg import VGG

    torch.manual_seed(1)
    source = VGG(vgg_config("vgg11_bn", 0.125, 5), num_classes=0, norm_layer=nn.BatchNorm2d, mlp_ratio=16 / 4096)
    source.pre_logits.fc2 = nn.Conv2d(16, 16, 1)  # fc7 of the fake classifier: 16 wide like our fc_channels
    calls = []

    def fake_create_model(name, pretrained=False, **kwargs):
        calls.append((name, pretrained, kwargs))
        return source

    monkeypatch.setattr(timm, "create_model", fake_create_model)
    weights = tmp_path / "vgg11_bn.safetensors"
    weights.write_bytes(b"unused")
    model = DeconvNet(C, backbone="vgg11_bn", weights=str(weights), fc_channels=16, fc_kernel=7)
    assert calls == [("vgg11_bn", True, {"pretrained_cfg_overlay": {"file": str(weights)}})]
    assert model.stages[0][0] is source.features[0]  # timm's own layers, not copies
    assert torch.equal(model.fc6[0].weight, source.pre_logits.fc1.weight) and model.fc_pretrained
    assert torch.equal(model.fc7[0].bias, source.pre_logits.fc2.bias)


# -- options ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"backbone": "vgg16"}, "backbone must be one of vgg11_bn, vgg13_bn, vgg16_bn, vgg19_bn"),
        ({"width": 0}, r"width must be in \(0, 1\]"),
        ({"depth": 6}, "depth must be an integer in 1..5"),
        ({"fc_kernel": 0}, "fc_kernel must be a positive integer"),
        ({"fc_channels": 0}, "fc_channels must be a positive integer"),
        ({"pretrained": True, "width": 0.5}, "pretrained weights need width=1.0"),
        ({"weights": "/nonexistent/vgg.pth", "width": 1.0}, "weights file not found"),
    ],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        DeconvNet(C, **{**TINY, **options})
    assert "\n" not in str(info.value)


def test_build_through_the_spec():
    model = method_specs()[0].build(C, **{**OPTIONS, **TINY})
    assert isinstance(model, DeconvNet) and model.score.out_channels == C
