"""Tests of the DeepLab plugin: registration, output strides, ASPP, multi-grid, decoder, inference, errors, loss."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from segbench.engine.config import TrainConfig
from segbench.errors import ConfigError
from segbench_deeplab import OPTIONS, method_specs
from segbench_deeplab.backbone import atrous_vgg, build_backbone
from segbench_deeplab.heads import AtrousConv2d
from segbench_deeplab.inference import multiscale_probabilities
from segbench_deeplab.model import DeepLab

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 5
TINY_RESNET = {"backbone": "test_resnet", "backbone_args": {"zero_init_last": False}}
TINY = {
    "v1": {"backbone": "vgg11", "width": 0.0625, "fc_channels": 8, "fc6_rate": 2, "dropout": 0.0},
    "v2": {**TINY_RESNET, "output_stride": 8, "aspp_rates": [1, 2, 3, 4]},
    "v3": {**TINY_RESNET, "output_stride": 16, "aspp_rates": [1, 2, 3], "aspp_channels": 8, "dropout": 0.0},
    "v3plus": {**TINY_RESNET, "output_stride": 16, "aspp_rates": [1, 2, 3], "aspp_channels": 8,
               "low_level_channels": 4, "decoder_channels": 8, "dropout": 0.0},
}
NAMES = ("deeplab_v1", "deeplab_v2", "deeplab_v3", "deeplab_v3plus")


def tiny(version: str, seed: int = 0, **options) -> DeepLab:
    torch.manual_seed(seed)
    return DeepLab(C, version, **{**OPTIONS[version], **TINY[version], **options})


def batch(b: int = 2, h: int = 48, w: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    targets = [{"mask": torch.randint(0, C, (h, w), generator=g)} for _ in range(b)]
    return images, targets


def dilations(module: nn.Module) -> list[int]:
    return [m.dilation[0] for m in module.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] > 1]


# -- registration ------------------------------------------------------------------------
def test_registers_four_methods_through_the_entry_point():
    from segbench.plugins import Registry

    registry = Registry().load()
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for name in NAMES:
        spec = registry.methods[name]
        spec.validate()
        assert spec.plugin == "deeplab" and spec.supervision == "pixel"
        assert spec.outputs == {"mask", "score_maps", "scores"}
        assert set(spec.recipes) == {"quick", "bench", "paper"}
        for recipe in spec.recipes.values():
            assert set(recipe.train) <= train_keys, (name, recipe.name, set(recipe.train) - train_keys)
            assert set(recipe.model) <= set(spec.options)
    v3 = registry.methods["deeplab_v3"]
    assert v3.options["aspp_rates"] == [6, 12, 18] and v3.options["multi_grid"] == [1, 2, 4]
    paper = v3.recipes["paper"].model
    assert paper["output_stride"] == 16 and paper["eval_output_stride"] == 8 and paper["eval_flip"] is True
    assert paper["eval_scales"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
    assert registry.methods["deeplab_v2"].options["aspp_rates"] == [6, 12, 18, 24]
    assert registry.methods["deeplab_v1"].options["fc6_rate"] == 12
    v1_paper = registry.methods["deeplab_v1"].recipes["paper"]
    assert v1_paper.train["schedule"] == "step" and v1_paper.train["milestones"] == [2000, 4000]
    assert [registry.methods[n].recipes["paper"].postprocess for n in NAMES] == [("densecrf",), ("densecrf",), (), ()]
    assert all(r.postprocess == () for n in NAMES for k, r in registry.methods[n].recipes.items() if k != "paper")


def test_the_v1_paper_recipe_resolves_with_the_crf_and_none_drops_it():
    from segbench.engine.config import resolve_config
    from segbench.engine.run import postprocess_chain, requested_postprocessors
    from segbench.plugins import get_registry

    registry = get_registry()
    if "densecrf" not in registry.postprocessors:
        pytest.skip("segbench-densecrf is not installed")
    method, dataset = registry.method("deeplab_v1"), registry.dataset("voc2012")
    chain, _ = postprocess_chain(method, dataset, registry, requested_postprocessors(method, "paper", [], registry))
    config = resolve_config(method, dataset, {}, "paper", {}, chain)
    assert list(config.postprocess) == ["densecrf"] and config.train.milestones == (2000, 4000)
    assert requested_postprocessors(method, "paper", ["none"], registry) == []


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, segbench_deeplab; segbench_deeplab.method_specs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_through_the_spec_and_unknown_options():
    specs = {s.name: s for s in method_specs()}
    model = specs["deeplab_v2"].build(C, **TINY["v2"])
    assert model.version == "v2" and len(model.head.branches) == 4
    with pytest.raises(ConfigError, match=r"deeplab_v1: unknown option\(s\) \['multi_grid'\]"):
        specs["deeplab_v1"].build(C, multi_grid=[1, 2, 4])


# -- outputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v3plus"])
def test_predict_keys_shapes_and_values(version):
    model = tiny(version).eval()
    images, _ = batch(2, 40, 56)
    predictions = model.predict(images)
    assert len(predictions) == 2 and model(images).shape == (2, C, 40, 56)
    for p in predictions:
        assert set(p) == {"mask", "score_maps", "scores"}
        assert p["score_maps"].shape == (C, 40, 56) and p["mask"].dtype == torch.int64
        torch.testing.assert_close(p["score_maps"].sum(0), torch.ones(40, 56))
        assert torch.equal(p["mask"], p["score_maps"].argmax(0))
        torch.testing.assert_close(p["scores"], p["score_maps"].amax(dim=(1, 2)))


# -- output stride --------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_output_stride_gives_the_feature_size(output_stride):
    model = tiny("v3", output_stride=output_stride)
    features = model.backbone(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-2:] == (64 // output_stride, 64 // output_stride)


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_vgg_output_stride_gives_the_feature_size(output_stride):
    model = tiny("v1", output_stride=output_stride)
    features = model.backbone(torch.randn(1, 3, 64, 64))
    assert features[-1].shape[-2:] == (64 // output_stride, 64 // output_stride)


def test_vgg16_largefov_surgery_follows_the_paper():
    """pool4 and pool5 keep the size (3x3, stride 1), conv5_x are dilated by 2; conv1-4 untouched; weights kept."""
    with torch.device("meta"):
        backbone = build_backbone("deeplab_v1", "vgg16", 8)
    layers = dict(backbone.named_children())
    pools = [n for n, m in layers.items() if isinstance(m, nn.MaxPool2d)]
    assert [(layers[p].kernel_size, layers[p].stride) for p in pools] == [(2, 2)] * 3 + [(3, 1)] * 2
    convs = [m for m in layers.values() if isinstance(m, nn.Conv2d)]
    assert [c.dilation[0] for c in convs] == [1] * 10 + [2] * 3
    assert all(c.padding[0] == c.dilation[0] for c in convs)
    ours = tiny("v1")
    assert ours.head.fc6.dilation == (2, 2) and isinstance(ours.head.pool5a, nn.AvgPool2d)
    assert DeepLab(C, "v1", **{**TINY["v1"], "fc6_rate": 12}).head.fc6.dilation == (12, 12)


def test_atrous_vgg_switches_back_and_forth():
    model = tiny("v1")
    x = torch.randn(1, 3, 64, 64)
    before = model.backbone(x)[-1]
    atrous_vgg(model.backbone, 32)
    assert model.backbone(x)[-1].shape[-2:] == (2, 2)
    atrous_vgg(model.backbone, 8)
    torch.testing.assert_close(model.backbone(x)[-1], before)


# -- ASPP ------------------------------------------------------------------------------------
def test_v2_aspp_has_four_atrous_branches_summed():
    model = DeepLab(C, "v2", **TINY_RESNET, output_stride=8, aspp_rates=[6, 12, 18, 24], aspp_channels=0)
    branches = model.head.branches
    assert [b.dilation for b in branches] == [(6, 6), (12, 12), (18, 18), (24, 24)]
    assert all(b.out_channels == C and b.kernel_size == (3, 3) for b in branches)
    x = torch.randn(2, model.backbone.feature_info.channels()[-1], 12, 12)
    torch.testing.assert_close(model.head(x), sum(b(x) for b in branches))
    wide = DeepLab(C, "v2", **TINY_RESNET, aspp_rates=[6, 12, 18, 24], aspp_channels=16)  # ASPP-L (VGG style)
    assert all(isinstance(b, nn.Sequential) and b[0].dilation[0] == r and b[-1].out_channels == C
               for b, r in zip(wide.head.branches, [6, 12, 18, 24]))


def test_v3_aspp_has_1x1_atrous_and_image_pooling_branches_with_batch_norm():
    model = DeepLab(C, "v3", **TINY_RESNET, aspp_rates=[6, 12, 18], aspp_channels=16)
    branches = model.aspp.branches
    assert len(branches) == 5
    assert branches[0][0].kernel_size == (1, 1)
    assert [b[0].dilation for b in branches[1:4]] == [(6, 6), (12, 12), (18, 18)]
    assert all(isinstance(b[1], nn.BatchNorm2d) for b in branches[:4])
    assert isinstance(branches[4].conv[1], nn.BatchNorm2d)  # image pooling: 1x1 conv + BN
    assert model.aspp.project[0].in_channels == 5 * 16 and model.classifier.in_channels == 16
    x = torch.randn(2, model.backbone.feature_info.channels()[-1], 6, 6)
    model.eval()
    pooled = branches[4](x)
    assert pooled.shape == (2, 16, 6, 6) and torch.equal(pooled, pooled[:, :, :1, :1].expand_as(pooled))
    assert len(DeepLab(C, "v3", **TINY_RESNET, image_pooling=False, aspp_channels=8).aspp.branches) == 4


def test_separable_option_makes_aspp_and_decoder_depthwise():
    model = tiny("v3plus", separable=True).eval()  # eval: image pooling's BN needs 2+ values per channel to train
    atrous = model.aspp.branches[1]
    assert atrous[0].groups == atrous[0].in_channels and atrous[0].dilation == (1, 1)
    assert atrous[3].kernel_size == (1, 1)
    assert all(block[0].groups == block[0].in_channels for block in model.decoder.fuse)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, C, 64, 64)


# -- multi-grid -------------------------------------------------------------------------------------
@pytest.mark.parametrize("output_stride, rates", [(16, [2, 4, 8]), (8, [4, 8, 16])])
def test_multi_grid_sets_the_last_stage_dilations_of_resnet50(output_stride, rates):
    with torch.device("meta"):
        model = DeepLab(C, "v3", backbone="resnet50", output_stride=output_stride, multi_grid=[1, 2, 4],
                        aspp_channels=8)
        plain = DeepLab(C, "v3", backbone="resnet50", output_stride=output_stride, multi_grid=None,
                        aspp_channels=8)
    layer4 = model.backbone.layer4
    assert [block.conv2.dilation[0] for block in layer4] == rates == model.multi_grid_rates
    assert [block.conv2.padding[0] for block in layer4] == rates
    assert [b.conv2.dilation[0] for b in plain.backbone.layer4] == [16 // output_stride] + [32 // output_stride] * 2
    assert dilations(model.backbone.layer3) == dilations(plain.backbone.layer3)  # only the last stage changes


def test_multi_grid_on_basic_blocks_and_short_stages():
    model = tiny("v3", backbone_args={"zero_init_last": False, "layers": (1, 1, 1, 2)}, multi_grid=[1, 2, 4])
    assert [dilations(block) for block in model.backbone.layer4] == [[2, 2], [4, 4]]  # basic blocks: both convs
    x = torch.randn(1, 3, 64, 64)
    assert model.backbone(x)[-1].shape[-2:] == (4, 4)


# -- v3+ decoder -----------------------------------------------------------------------------------------
def test_v3plus_decoder_uses_the_stride_4_feature():
    model = tiny("v3plus").eval()
    reductions = model.backbone.feature_info.reduction()
    assert reductions[model.low_index] == 4
    assert model.decoder.reduce[0].in_channels == model.backbone.feature_info.channels()[model.low_index]
    assert model.decoder.reduce[0].out_channels == 4
    seen = {}
    model.decoder.reduce.register_forward_hook(lambda mod, inp, out: seen.__setitem__("low", inp[0]))
    images = torch.randn(1, 3, 64, 96)
    out = model(images)
    features = model.backbone(images)
    assert seen["low"].shape[-2:] == (16, 24)
    torch.testing.assert_close(seen["low"], features[model.low_index])
    # the fused scores depend on the low-level map: perturb it and the output changes
    handle = model.decoder.reduce.register_forward_pre_hook(lambda mod, inp: (inp[0] + torch.randn_like(inp[0]),))
    assert not torch.allclose(model(images), out)
    handle.remove()


# -- inference options -----------------------------------------------------------------------------------
def test_multiscale_and_flip_equal_manual_averaging():
    model = tiny("v3", eval_scales=[0.5, 1.0, 1.5], eval_flip=True).eval()
    images, _ = batch(2, 40, 56)
    expected = torch.zeros(2, C, 40, 56)
    with torch.no_grad():
        for scale in (0.5, 1.0, 1.5):
            x = images if scale == 1.0 else F.interpolate(images, size=(round(40 * scale), round(56 * scale)),
                                                          mode="bilinear", align_corners=False)
            for flip in (False, True):
                logits = model(x.flip(-1)).flip(-1) if flip else model(x)
                logits = F.interpolate(logits, size=(40, 56), mode="bilinear", align_corners=False)
                expected += logits.softmax(1) / 6
    predictions = model.predict(images)
    got = torch.stack([p["score_maps"] for p in predictions])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    single = torch.stack([p["score_maps"] for p in tiny("v3").eval().predict(images)])
    assert not torch.allclose(got, single, atol=1e-4)  # the options do something


def _former_multiscale_probabilities(logits_fn, images, scales=(1.0,), flip=False):
    """DeepLab's own averaging before it used the engine's (segbench.engine.tta.average_views), verbatim."""
    size = tuple(images.shape[-2:])
    total, count = None, 0
    for scale in scales:
        x = images
        if scale != 1.0:
            scaled = (max(1, round(size[0] * scale)), max(1, round(size[1] * scale)))
            x = F.interpolate(images, size=scaled, mode="bilinear", align_corners=False)
        views = [(x, False), (x.flip(-1), True)] if flip else [(x, False)]
        for view, flipped in views:
            logits = logits_fn(view).float()
            if flipped:
                logits = logits.flip(-1)
            if tuple(logits.shape[-2:]) != size:
                logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
            probs = logits.softmax(dim=1)
            total = probs if total is None else total + probs
            count += 1
    return total / count


@pytest.mark.parametrize("scales, flip", [((1.0,), False), ((1.0,), True), ((0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True)])
def test_multiscale_probabilities_are_bit_identical_to_the_former_code(scales, flip):
    model = tiny("v3").eval()
    images, _ = batch(2, 37, 45)
    with torch.no_grad():
        assert torch.equal(multiscale_probabilities(model, images, scales, flip),
                           _former_multiscale_probabilities(model, images, scales, flip))


def test_flip_is_undone_before_averaging():
    images = torch.randn(1, 3, 8, 10)
    equivariant = lambda x: x[:, :2] * 5  # noqa: E731 - a flipped input gives exactly flipped scores
    torch.testing.assert_close(multiscale_probabilities(equivariant, images, flip=True),
                               multiscale_probabilities(equivariant, images))

    def ramp(x):  # scores that depend on the position only: the flipped view's scores, flipped back, reverse it
        r = torch.linspace(0, 1, x.shape[-1]).expand(x.shape[0], 1, x.shape[-2], -1)
        return torch.cat([r, -r], dim=1) * 5

    plain = ramp(images).softmax(1)
    expected = (plain + plain.flip(-1)) / 2
    torch.testing.assert_close(multiscale_probabilities(ramp, images, flip=True), expected)


# -- eval output stride ------------------------------------------------------------------------------
def test_eval_output_stride_switch_keeps_weights_and_changes_feature_size():
    model = tiny("v3", eval_output_stride=8, multi_grid=[1, 2, 4])
    x = torch.randn(1, 3, 64, 64)
    assert model.backbone(x)[-1].shape[-2:] == (4, 4)
    assert dilations(model.aspp) == [1, 2, 3]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    assert model.current_output_stride == 8
    assert model.backbone(x)[-1].shape[-2:] == (8, 8)
    assert dilations(model.aspp) == [2, 4, 6]  # rates doubled with the map, as in DeepLab v3
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # the same weights at output stride 8 equal a network built at 8 with doubled rates
    native = tiny("v3", output_stride=8, aspp_rates=[2, 4, 6], multi_grid=[1, 2, 4]).eval()
    native.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x), native(x))
    model.train()
    assert model.backbone(x)[-1].shape[-2:] == (4, 4) and dilations(model.aspp) == [1, 2, 3]


def test_eval_output_stride_switch_on_v3plus_keeps_the_decoder_rates():
    model = tiny("v3plus", eval_output_stride=8, separable=True).eval()
    assert dilations(model.decoder) == [1, 1]
    assert [m.dilation[0] for m in model.aspp.modules() if isinstance(m, AtrousConv2d)] == [2, 4, 6]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, C, 64, 64)


# -- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "version, options, message",
    [
        ("v3", {"output_stride": 4}, "deeplab_v3: option output_stride must be one of 8, 16, 32, got 4"),
        ("v3", {"eval_output_stride": 12}, "option eval_output_stride must be one of 8, 16, 32"),
        ("v3", {"backbone": "resnet_nope"}, "deeplab_v3: option backbone: unknown timm backbone 'resnet_nope'"),
        ("v2", {"backbone": "test_vit", "backbone_args": None},
         "option output_stride=8: backbone 'test_vit' cannot give it"),
        ("v3", {"width": 0.5}, "option width applies to VGG backbones only"),
        ("v1", {"width": 0.5, "pretrained": True}, "option width=0.5: pretrained VGG weights need width=1.0"),
        ("v3", {"backbone": "vgg11", "width": 0.0625, "backbone_args": None},
         "option multi_grid needs a ResNet-like backbone"),
        ("v3", {"aspp_rates": []}, "option aspp_rates must be a non-empty list"),
        ("v3", {"multi_grid": [1, 0]}, "option multi_grid must be a list of positive integers"),
        ("v3", {"eval_scales": [1.0, -1]}, "option eval_scales must be a non-empty list of positive numbers"),
        ("v1", {"fc_kernel": 4}, "option fc_kernel must be a positive odd integer"),
        ("v2", {"msc_scales": [1.0, 0]}, "deeplab_v2: option msc_scales must be a list of distinct positive numbers"),
        ("v2", {"msc_scales": [1.0, 1]}, "option msc_scales must be a list of distinct positive numbers"),
        ("v2", {"msc_scales": 0.5}, "option msc_scales must be"),
        ("v3", {"dropout": 1.0}, "option dropout must be in"),
        ("v3plus", {"low_level_stride": 16}, "option low_level_stride=16: backbone 'test_resnet' has no"),
        ("v3", {"backbone": "vgg11", "width": 0.0625}, "rejects options {'zero_init_last': False}"),
    ],
)
def test_bad_options_are_one_line_config_errors(version, options, message):
    with pytest.raises(ConfigError) as info:
        tiny(version, **options)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- pretrained fc6 / fc7 ---------------------------------------------------------------------------
def test_vgg_classifier_is_decimated_into_fc6_fc7(monkeypatch):
    import timm

    model = DeepLab(C, "v1", backbone="vgg11", width=0.0625, fc_channels=1024, dropout=0.0)
    in_ch = model.head.fc6.in_channels

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre_logits = nn.Module()
            self.pre_logits.fc1 = nn.Conv2d(in_ch, 4096, 7)
            self.pre_logits.fc2 = nn.Conv2d(4096, 4096, 1)

    fake = Classifier()
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: fake)
    model._load_vgg_classifier("vgg11", "unused.pth")
    assert model.fc_pretrained
    fc1, fc2 = fake.pre_logits.fc1, fake.pre_logits.fc2
    torch.testing.assert_close(model.head.fc6.weight[5], fc1.weight[20][:, [0, 3, 6]][:, :, [0, 3, 6]])
    torch.testing.assert_close(model.head.fc6.bias[5], fc1.bias[20])
    torch.testing.assert_close(model.head.fc7.weight[7, 9, 0, 0], fc2.weight[28, 36, 0, 0])


# -- loss and training ------------------------------------------------------------------------------
def test_loss_ignores_255_and_matches_cross_entropy():
    model = tiny("v3").eval()
    images, targets = batch(2, 40, 48)
    targets[0]["mask"][:20] = 255
    logits = model(images)
    masks = torch.stack([t["mask"] for t in targets])
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    torch.testing.assert_close(model.loss(images, targets)["loss"], expected)
    void = [{"mask": torch.full((40, 48), 255)} for _ in range(2)]
    assert model.loss(images, void)["loss"].item() == 0.0


@pytest.mark.parametrize("version", ["v1", "v2", "v3", "v3plus"])
def test_loss_backward_reaches_the_head_and_the_backbone(version):
    model = tiny(version).train()
    images, targets = batch(2, 48, 48)
    model.loss(images, targets)["loss"].backward()
    params = dict(model.named_parameters())
    head = [p for n, p in params.items() if not n.startswith("backbone.")]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params.values())
    assert any(p.grad.abs().sum() > 0 for p in head)
    assert any(p.grad.abs().sum() > 0 for n, p in params.items() if n.startswith("backbone."))


def test_freeze_bn_keeps_backbone_batch_norm_fixed():
    model = tiny("v2", freeze_bn=True).train()
    norms = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training and not m.weight.requires_grad for m in norms)
    before = norms[0].running_mean.clone()
    images, targets = batch(2, 48, 48)
    model.loss(images, targets)["loss"].backward()
    assert torch.equal(norms[0].running_mean, before)



def test_the_v2_paper_recipe_brings_the_v2_release_crf_parameters_and_v1_keeps_its_own():
    from segbench.engine.config import resolve_config
    from segbench.engine.run import postprocess_chain, requested_postprocessors
    from segbench.plugins import get_registry

    registry = get_registry()
    if "densecrf" not in registry.postprocessors:
        pytest.skip("segbench-densecrf is not installed")
    dataset = registry.dataset("voc2012")
    crf = {}
    for name in ("deeplab_v1", "deeplab_v2"):
        method = registry.method(name)
        chain, _ = postprocess_chain(method, dataset, registry, requested_postprocessors(method, "paper", [], registry))
        config = resolve_config(method, dataset, {}, "paper", {}, chain)
        crf[name] = config.postprocess["densecrf"]
        assert config.train.train_split == "trainaug"
    assert crf["deeplab_v1"]["theta_alpha"] == 121.0  # the post-processor's default (DeepLab-LargeFOV, v1)
    v2 = {k: crf["deeplab_v2"][k] for k in ("iterations", "bilateral_weight", "theta_alpha", "theta_beta",
                                            "gaussian_weight", "theta_gamma")}
    assert v2 == {"iterations": 10, "bilateral_weight": 4.0, "theta_alpha": 49.0, "theta_beta": 5.0,
                  "gaussian_weight": 3.0, "theta_gamma": 3.0}  # the v2 release's run_densecrf.sh
    # --set still overrides the recipe's CRF options
    method = registry.method("deeplab_v2")
    chain, _ = postprocess_chain(method, dataset, registry, requested_postprocessors(method, "paper", [], registry))
    config = resolve_config(method, dataset, {}, "paper", {"postprocess.densecrf.theta_alpha": 80}, chain)
    assert config.postprocess["densecrf"]["theta_alpha"] == 80


# -- multi-scale inputs (MSC, DeepLab v2) ---------------------------------------------------------------
MSC = [1.0, 0.75, 0.5]


def msc_by_hand(model: DeepLab, images: torch.Tensor):
    """The v2 MSC by hand: head logits at scales 1, 0.75, 0.5, resized to the scale-1 logits, their maximum."""
    h, w = images.shape[-2:]
    per_scale = []
    for scale in MSC:
        x = images if scale == 1.0 else F.interpolate(images, size=(round(h * scale), round(w * scale)),
                                                      mode="bilinear", align_corners=False)
        per_scale.append(model.head_logits(x))
    size = per_scale[0].shape[-2:]
    resized = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in per_scale]
    return torch.stack(resized).amax(0), per_scale


def ce(logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    up = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    keep = masks != 255
    return F.cross_entropy(up.permute(0, 2, 3, 1)[keep], masks[keep])


def test_msc_is_a_late_option_off_by_default_and_on_in_the_v2_paper_recipe_only():
    from segbench.engine.config import identity_dict, resolve_config
    from segbench.plugins import get_registry

    registry = get_registry()
    shapes = registry.dataset("shapes")
    for name in NAMES:
        spec = registry.method(name)
        assert spec.options["msc_scales"] is None and spec.late_options == {"lr_mults": "head", "msc_scales": None}
        for recipe in ("quick", "bench"):  # config ids of the CPU recipes as before the option
            config = resolve_config(spec, shapes, {}, recipe)
            assert "msc_scales" not in identity_dict(config.to_dict(), late_options=spec.late_options)["model"]
        paper = spec.recipes["paper"].model.get("msc_scales")
        assert paper == (MSC if name == "deeplab_v2" else None), name
    assert not any("No MSC" in line for line in registry.method("deeplab_v2").recipes["paper"].deviations)


def test_msc_off_keeps_the_single_scale_forward_and_loss():
    model = tiny("v2").eval()
    images, targets = batch(2, 40, 48)
    with torch.no_grad():
        expected = F.interpolate(model.head_logits(images), size=(40, 48), mode="bilinear", align_corners=False)
        torch.testing.assert_close(model(images), expected, rtol=0, atol=0)
        losses = model.loss(images, targets)
    assert set(losses) == {"loss"}
    torch.testing.assert_close(losses["loss"], ce(model.head_logits(images), torch.stack([t["mask"] for t in targets])))


def test_msc_loss_is_a_term_per_scale_plus_the_fused_map():
    model = tiny("v2", msc_scales=MSC).eval()  # eval: batch norm statistics stay fixed between the calls
    images, targets = batch(2, 48, 64)
    targets[1]["mask"][:10] = 255
    masks = torch.stack([t["mask"] for t in targets])
    with torch.no_grad():
        losses = model.loss(images, targets)
        fused, per_scale = msc_by_hand(model, images)
        single = tiny("v2").eval().loss(images, targets)["loss"]  # the same weights without MSC
    assert list(losses) == ["loss_x1", "loss_x0.75", "loss_x0.5", "loss_fused"]
    assert [tuple(p.shape[-2:]) for p in per_scale] == [(6, 8), (5, 6), (3, 4)]  # stride 8 of 48x64, 36x48, 24x32
    for key, logits in zip(list(losses)[:3], per_scale):
        torch.testing.assert_close(losses[key], ce(logits, masks))
    torch.testing.assert_close(losses["loss_fused"], ce(fused, masks))
    torch.testing.assert_close(losses["loss_x1"], single)  # scale 1's term is the single-scale loss
    assert len({round(float(v), 6) for v in losses.values()}) == 4  # four different terms


def test_msc_predict_is_the_softmax_of_the_fused_max():
    model = tiny("v2", msc_scales=MSC).eval()
    images, _ = batch(2, 48, 64)
    with torch.no_grad():
        fused, per_scale = msc_by_hand(model, images)
        logits = F.interpolate(fused, size=(48, 64), mode="bilinear", align_corners=False)
        plain = tiny("v2").eval().predict(images)
    assert (fused >= F.interpolate(per_scale[2], size=fused.shape[-2:], mode="bilinear", align_corners=False)).all()
    torch.testing.assert_close(model(images), logits)
    predictions = model.predict(images)
    torch.testing.assert_close(torch.stack([p["score_maps"] for p in predictions]), logits.softmax(1))
    assert all(torch.equal(p["mask"], p["score_maps"].argmax(0)) for p in predictions)
    assert not torch.allclose(predictions[0]["score_maps"], plain[0]["score_maps"], atol=1e-4)  # MSC does something


def test_msc_training_reaches_every_parameter():
    model = tiny("v2", msc_scales=MSC).train()
    images, targets = batch(2, 48, 48)
    losses = model.loss(images, targets)
    assert len(losses) == 4 and all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
