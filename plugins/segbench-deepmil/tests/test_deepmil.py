"""The deepmil method: registration, global max pooling, the per-class log-loss, multi-scale training and options."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.errors import ConfigError
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 7
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("deepmil", C, **{**TINY, **options})


def batch(n: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


def log_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The paper's loss by hand: sum over classes of log(1 + exp(-y s)), y = +-1, averaged over images."""
    y = 2 * labels - 1
    return torch.log1p(torch.exp(-y * scores)).sum(1).mean()


def test_spec_is_registered_from_the_entry_point():
    spec = get_registry().method("deepmil")
    assert spec.supervision == "image" and spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "Oquab" in spec.paper and "CVPR 2015" in spec.paper
    paper = spec.recipes["paper"].model
    assert paper["pretrained"] is True and paper["train_scale_range"] == [0.7, 1.4]
    assert paper["eval_scales"] == [0.7, 1.0, 1.4] and spec.options["eval_scales"] == [1.0]
    assert spec.late_options == {"eval_scales": [1.0], "vgg_fc": False}
    assert paper["vgg_fc"] is True and spec.options["vgg_fc"] is False
    assert get_registry().plugins["deepmil"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_deepmil; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_predict_shapes_and_scores_are_the_global_max_of_the_maps():
    model = build(adapt_channels=8).eval()
    predictions = model.predict(batch(3)[0])
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"scores", "score_maps"}
        assert p["scores"].shape == (C,) and p["score_maps"].shape == (C, 8, 8)
        torch.testing.assert_close(p["scores"], p["score_maps"].flatten(1).max(1).values)
    assert model.predict(torch.randn(1, 3, 40, 56))[0]["score_maps"].shape == (C, 10, 14)


def test_max_pooling_on_a_hand_made_map():
    model = build().eval()
    maps = torch.tensor([[1.0, -2.0], [3.5, 0.0]]).expand(1, C, 2, 2).clone()
    maps[0, 2, 0, 1] = 9.0
    model.class_maps = lambda images: maps  # the pooling and the loss on known maps
    scores, _ = model(torch.zeros(1, 3, 8, 8))
    assert scores[0].tolist() == [3.5, 3.5, 9.0, 3.5, 3.5, 3.5, 3.5]
    labels = torch.zeros(1, C)
    labels[0, 2] = 1.0
    expected = torch.log1p(torch.exp(torch.tensor(-9.0))) + 6 * torch.log1p(torch.exp(torch.tensor(3.5)))
    torch.testing.assert_close(model.loss(torch.zeros(1, 3, 8, 8), [{"labels": labels[0]}])["loss"], expected)


def test_loss_is_the_sum_over_classes_of_the_log_loss():
    model = build().eval()
    images, targets = batch(3)
    scores, _ = model(images)
    labels = torch.stack([t["labels"] for t in targets])
    torch.testing.assert_close(model.loss(images, targets)["loss"], log_loss(scores, labels))


def test_multi_scale_training_rescales_the_batch_inside_the_loss():
    model = build(train_scales=[0.5]).train()  # one factor: the rescaled batch is known
    images, targets = batch(2, size=48)
    labels = torch.stack([t["labels"] for t in targets])
    with torch.no_grad():
        loss = model.loss(images, targets)["loss"]
        small = F.interpolate(images, size=(24, 24), mode="bilinear", align_corners=False, antialias=True)
        scores, maps = model(small)
    assert maps.shape[-2:] == (6, 6)
    torch.testing.assert_close(loss, log_loss(scores, labels))
    model.eval()  # evaluation never rescales
    assert model.predict(images)[0]["score_maps"].shape == (C, 12, 12)


def test_scale_draws_follow_the_options():
    torch.manual_seed(0)
    listed = build(train_scales=[0.7, 1.0, 1.3])
    draws = [listed.draw_scale() for _ in range(200)]
    assert set(draws) == {0.7, 1.0, 1.3}
    ranged = build(train_scale_range=[0.7, 1.4])
    draws = [ranged.draw_scale() for _ in range(500)]
    assert all(0.7 <= d <= 1.4 for d in draws) and min(draws) < 0.75 and max(draws) > 1.35
    assert build().draw_scale() == 1.0


def test_rescale_never_goes_below_one_feature_cell():
    model = build()
    assert model.stride == 4
    assert model.rescale(torch.randn(1, 3, 8, 8), 0.1).shape[-2:] == (4, 4)
    assert model.rescale(torch.randn(1, 3, 20, 30), 1.5).shape[-2:] == (30, 45)


def test_multi_scale_loss_trains_and_reaches_every_parameter():
    model = build(train_scale_range=[0.7, 1.4], adapt_channels=8, dropout=0.5).train()
    model.loss(*batch(2))["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_eval_scales_one_is_the_single_pass_predict():
    model = build(adapt_channels=8, eval_scales=[1.0]).eval()
    images = batch(3)[0]
    with torch.no_grad():
        scores, maps = model(images)  # the single pass predict returned before eval_scales existed
    for p, s, m in zip(model.predict(images), scores, maps):
        assert torch.equal(p["scores"], s.float()) and torch.equal(p["score_maps"], m.float())


def test_test_time_scales_max_fuse_the_maps_and_the_scores():
    model = build(adapt_channels=8, eval_scales=[1.0, 0.5, 2.0]).eval()
    images = batch(2, size=32)[0]
    with torch.no_grad():
        one = model.class_maps(images)  # 8x8
        half = model.class_maps(F.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False,
                                              antialias=True))  # 4x4
        double = model.class_maps(F.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False))
    assert half.shape[-2:] == (4, 4) and double.shape[-2:] == (16, 16)
    back = [F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False) for m in (half, double)]
    fused = torch.maximum(one, torch.maximum(*back))
    scores = torch.stack([m.flatten(2).amax(-1) for m in (one, half, double)]).amax(0)
    predictions = model.predict(images)
    torch.testing.assert_close(torch.stack([p["score_maps"] for p in predictions]), fused)
    torch.testing.assert_close(torch.stack([p["scores"] for p in predictions]), scores)
    assert all((p["scores"] >= p["score_maps"].flatten(1).amax(1) - 1e-6).all() for p in predictions)
    single = build(adapt_channels=8).eval().predict(images)
    assert not torch.allclose(predictions[0]["scores"], single[0]["scores"])  # the option does something
    model.train()
    images, targets = batch(2)
    loss = model.loss(images, targets)["loss"]  # training ignores eval_scales
    with torch.no_grad():
        expected = log_loss(model(images)[0], torch.stack([t["labels"] for t in targets]))
    torch.testing.assert_close(loss, expected)


def test_eval_scales_at_one_stays_out_of_the_config_id():
    from segbench.engine.config import identity_dict, resolve_config

    registry = get_registry()
    spec, shapes = registry.method("deepmil"), registry.dataset("shapes")
    for recipe in ("quick", "bench"):
        config = resolve_config(spec, shapes, {}, recipe)
        assert config.model["eval_scales"] == [1.0]
        assert config.model["vgg_fc"] is False
        ident = identity_dict(config.to_dict(), late_options=spec.late_options)["model"]
        assert "eval_scales" not in ident and "vgg_fc" not in ident
    paper = resolve_config(spec, shapes, {}, "paper")
    ident = identity_dict(paper.to_dict(), late_options=spec.late_options)["model"]
    assert ident["eval_scales"] == [0.7, 1.0, 1.4] and ident["vgg_fc"] is True


@pytest.mark.parametrize(
    "options, match",
    [({"train_scales": []}, r"deepmil: train_scales must be a non-empty list of factors in \(0, 4\] or none"),
     ({"train_scales": [0.7, 0]}, r"train_scales must be a non-empty list of factors in \(0, 4\]"),
     ({"train_scales": [-1.0]}, "train_scales"), ({"train_scales": "big"}, "train_scales"),
     ({"train_scales": [8.0]}, r"\(0, 4\]"),
     ({"train_scale_range": [1.4, 0.7]}, r"train_scale_range must be \[low, high\] with 0 < low <= high <= 4"),
     ({"train_scale_range": [0.7]}, "train_scale_range"), ({"train_scale_range": 1.2}, "train_scale_range"),
     ({"train_scales": [1.0], "train_scale_range": [0.7, 1.4]}, "set train_scales or train_scale_range, not both"),
     ({"eval_scales": []}, r"deepmil: eval_scales must be a non-empty list of factors in \(0, 4\], got \[\]"),
     ({"eval_scales": [1.0, 0]}, "eval_scales"), ({"eval_scales": 1.0}, "eval_scales"),
     ({"adapt_channels": -1}, "adapt_channels must be an integer >= 0, got -1"),
     ({"vgg_fc": True}, "vgg_fc=True needs a VGG backbone"), ({"vgg_fc": 1}, "vgg_fc must be true or false"),
     ({"vgg_fc": True, "backbone": "vgg11", "out_index": 4},
      r"vgg_fc=True needs the VGG cut at pool5 \(out_index 5 or -1\), got out_index=4"),
     ({"dropout": 1.0}, r"dropout must be a number in \[0, 0.99\]"),
     ({"backbone": "no_such_net"}, "no_such_net"), ({"nope": 1}, "nope")],
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build(**options)
    assert "\n" not in str(info.value)


# -- default network unchanged; the paper's C6/C7 (ImageNet fc6/fc7 as convolutions) ---------------------------
@pytest.mark.parametrize("options", [{}, {"adapt_channels": 8, "dropout": 0.5}])
def test_default_options_build_the_same_network_as_before(options):
    """vgg_fc=False (the default): the same parameters and class maps as the network built before the option."""
    from torch import nn

    from segbench.nn.backbones import feature_backbone
    from segbench.nn.heads import ClassMapHead

    model = build(**options).eval()
    torch.manual_seed(0)
    backbone, channels = feature_backbone("deepmil", TINY["backbone"], TINY["out_index"], None, False, None, None)
    adapt = nn.Identity()
    if options.get("adapt_channels"):
        adapt = nn.Sequential(nn.Conv2d(channels, options["adapt_channels"], 1), nn.ReLU(inplace=True))
        channels = options["adapt_channels"]
    old = nn.ModuleDict({"backbone": backbone, "adapt": adapt,
                         "head": ClassMapHead(channels, C, dropout=options.get("dropout", 0.0))}).eval()
    assert model.state_dict().keys() == old.state_dict().keys()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in model.state_dict().items())
    images = batch(2)[0]
    with torch.no_grad():
        assert torch.equal(model.class_maps(images), old["head"](old["adapt"](old["backbone"](images)[-1])))
    assert isinstance(model.fc, nn.Identity) and model.param_multipliers(10.0) is None


def test_paper_network_has_c6_c7_from_vgg_at_output_stride_32():
    from segbench.nn.vgg import VGGFC
    from segbench.testing.checks import paper_recipe_problems

    spec = get_registry().method("deepmil")
    options = {**spec.recipes["paper"].model, "pretrained": False}
    torch.manual_seed(0)
    model = segbench.create_method("deepmil", 20, **options).eval()
    assert isinstance(model.fc, VGGFC) and not model.fc_pretrained  # pretrained=False: fc6 / fc7 random
    assert model.fc.fc6.weight.shape == (4096, 512, 7, 7) and model.fc.fc7.weight.shape == (4096, 4096, 1, 1)
    assert model.adapt[0].weight.shape == (2048, 4096, 1, 1) and model.stride == 32
    with torch.no_grad():
        scores, maps = model(torch.randn(1, 3, 64, 96))
    assert scores.shape == (1, 20) and maps.shape == (1, 20, 2, 3)  # output stride 32: pool5's size
    table = model.param_multipliers(10.0)  # the transferred fc6 / fc7 at the backbone's lr, FCa / FCb x10
    assert table["fc.fc6.weight"] == (1.0, 1.0) and table["backbone.features_0.weight"] == (1.0, 1.0)
    assert table["adapt.0.weight"] == (10.0, 1.0) and table["head.conv.bias"] == (10.0, 1.0)
    assert paper_recipe_problems(spec) == []
    assert not any("dropped" in line for line in spec.recipes["paper"].deviations)


def test_vgg_fc_copies_imagenet_fc6_fc7_when_pretrained(monkeypatch):
    """pretrained=True with the download stubbed: the backbone at random init; fc6 / fc7 go to the shared loader
    (segbench.nn.vgg.load_vgg_classifier, the way FCN copies VGG's classifier)."""
    import timm

    import segbench_deepmil.model as deepmil_model
    from segbench.nn import backbones

    real, calls = timm.create_model, []

    def create_model(name, pretrained=False, **options):
        options.pop("pretrained_cfg_overlay", None)
        return real(name, pretrained=False, **options)

    def loader(fc6, fc7, name, weights):
        calls.append((fc6.weight.shape, fc7.weight.shape, name, weights))
        return True

    monkeypatch.setattr(backbones, "cached_or_online", lambda *a, **k: None)
    monkeypatch.setattr(timm, "create_model", create_model)
    monkeypatch.setattr(deepmil_model, "load_vgg_classifier", loader)
    model = build(backbone="vgg11", out_index=5, pretrained=True, vgg_fc=True)
    assert model.fc_pretrained and calls == [((4096, 512, 7, 7), (4096, 4096, 1, 1), "vgg11", None)]
