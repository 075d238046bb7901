"""The emadapt method: registration, outputs, the EM loss and option checks, on a tiny backbone."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry
from segbench_emadapt.adaptive_bias import latent_segmentation

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 5
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 logits


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("emadapt", C, **{**TINY, **options})


def batch(n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


def test_spec_is_registered_from_the_entry_point_with_the_papers_values():
    spec = get_registry().method("emadapt")
    assert spec.supervision == "image" and spec.outputs == {"scores", "score_maps", "mask"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "Papandreou" in spec.paper and "ICCV 2015" in spec.paper
    assert (spec.options["fg_share"], spec.options["bg_share"], spec.options["background"]) == (0.2, 0.4, 0)
    paper = spec.recipes["paper"].model
    assert (paper["backbone"], paper["pretrained"], paper["fg_share"], paper["bg_share"]) == ("vgg16", True, 0.2, 0.4)
    assert paper["head_channels"] == 1024 and paper["dropout"] == 0.5
    for recipe in spec.recipes.values():
        assert set(recipe.model) <= set(spec.options)
    assert get_registry().plugins["emadapt"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_emadapt; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_predict_outputs_at_the_input_size(size):
    model = build().eval()
    predictions = model.predict(torch.randn(2, 3, *size))
    assert len(predictions) == 2
    for p in predictions:
        assert set(p) == {"scores", "score_maps", "mask"}
        assert p["score_maps"].shape == (C, *size) and p["score_maps"].dtype == torch.float32
        assert p["mask"].shape == size and p["mask"].dtype == torch.int64
        assert p["scores"].shape == (C,) and p["scores"].dtype == torch.float32
        torch.testing.assert_close(p["score_maps"].sum(0), torch.ones(size))  # per-pixel softmax
        assert torch.equal(p["mask"], p["score_maps"].argmax(0))  # test time: the plain argmax, no labels
        torch.testing.assert_close(p["scores"], p["score_maps"].flatten(1).amax(1))


def test_logits_are_at_the_feature_stride_with_or_without_the_largefov_head():
    images = torch.randn(1, 3, 32, 32)
    assert build()(images).shape == (1, C, 8, 8)
    model = build(head_channels=16, head_dilation=2, dropout=0.5)
    assert model.head[0].dilation == (2, 2) and model.head[0].out_channels == 16
    assert model.eval()(images).shape == (1, C, 8, 8)


def test_loss_is_the_cross_entropy_against_the_e_step():
    model = build(shuffle=False).eval()  # eval: batch norm uses running stats, so forward is repeatable
    images, targets = batch(3)
    logits = model(images)
    present = torch.stack([t["labels"] for t in targets]) > 0.5
    latent = latent_segmentation(logits.log_softmax(1), present, shuffle=False)
    torch.testing.assert_close(model.loss(images, targets)["loss"], F.cross_entropy(logits, latent))


def test_the_optional_image_loss_is_bce_on_top_share_pooled_logits():
    """image_loss_weight w adds w x BCE(mean of each class's top ceil(0.2 * 64) = 13 logits, labels), background
    and 'difficult' classes left out; w = 0 (the paper) adds nothing."""
    images, targets = batch(3)
    assert set(build().eval().loss(images, targets)) == {"loss"}
    model = build(image_loss_weight=0.5, shuffle=False).eval()
    logits = model(images)
    labels = torch.stack([t["labels"] for t in targets])
    pooled = logits.flatten(2).topk(13, dim=2).values.mean(2)
    per = F.binary_cross_entropy_with_logits(pooled, labels, reduction="none")
    losses = model.loss(images, targets)
    torch.testing.assert_close(losses["image_loss"], 0.5 * per[:, 1:].mean())
    difficult = torch.zeros(C, dtype=torch.bool)
    difficult[3] = True
    keep = torch.ones(3, C, dtype=torch.bool)
    keep[:, 0] = False
    keep[0, 3] = False
    ignored = model.loss(images, [{**targets[0], "labels_ignore": difficult}] + targets[1:])
    torch.testing.assert_close(ignored["image_loss"], 0.5 * per[keep].mean())


def test_em_warmup_trains_the_image_loss_alone_for_its_first_training_steps():
    model = build(image_loss_weight=1.0, em_warmup=2, shuffle=False)
    images, targets = batch(2)
    model.eval()
    assert model.loss(images, targets)["loss"] > 0  # evaluation: the full loss, not counted
    model.train()
    first, second, third = (model.loss(images, targets) for _ in range(3))
    assert first["loss"].item() == 0.0 and second["loss"].item() == 0.0 and third["loss"].item() > 0
    assert all(out["image_loss"].item() > 0 for out in (first, second, third))
    assert int(model.state_dict()["train_steps"]) == 3  # saved with the weights: a resumed run keeps its phase
    first["image_loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


def test_the_e_step_uses_the_image_labels():
    """Image i is labelled with class 1 + i % 4 only: its latent map holds that class and the background, the
    class on at least ceil(20 % of 64) = 13 cells, the background on the rest."""
    model = build(shuffle=False).eval()
    images, targets = batch(4)
    latent = model.latent(model(images), targets)
    assert latent.shape == (4, 8, 8)
    for i, labels in enumerate(latent):
        cls = 1 + i % (C - 1)
        assert set(labels.unique().tolist()) <= {0, cls}
        assert (labels == cls).sum() >= math.ceil(0.2 * 64)
    difficult = torch.zeros(C, dtype=torch.bool)
    difficult[2] = True
    latent = model.latent(model(images), [{**targets[0], "labels_ignore": difficult}] + targets[1:])
    assert set(latent[0].unique().tolist()) <= {0, 1, 2}  # a 'difficult' class may win, absent ones may not


def test_loss_backward_reaches_every_parameter_and_decreases():
    model = build(head_channels=8, head_dilation=2, image_loss_weight=1.0).train()
    images, targets = batch(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for step in range(12):
        losses = model.loss(images, targets)
        assert set(losses) == {"loss", "image_loss"} and all(v.dim() == 0 for v in losses.values())
        loss = sum(losses.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            grads = [p.grad for p in model.parameters() if p.requires_grad]
            assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
        optimizer.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.5 * values[0]


@pytest.mark.parametrize(
    "options, message",
    [({"fg_share": 0}, "fg_share must be a fraction in (0, 1), got 0"),
     ({"fg_share": 1.0}, "fg_share must be a fraction in (0, 1), got 1.0"),
     ({"fg_share": -0.2}, "fg_share must be a fraction in (0, 1)"), ({"fg_share": "0.2"}, "fg_share must be"),
     ({"bg_share": 1.5}, "bg_share must be a fraction in (0, 1), got 1.5"),
     ({"bg_share": float("nan")}, "bg_share must be a fraction in (0, 1)"),
     ({"background": 5}, "background must be a class index in [0, 4] or None, got 5"),
     ({"background": -1}, "background must be a class index"),
     ({"sweeps": 0}, "sweeps must be an integer >= 1, got 0"),
     ({"head_channels": -1}, "head_channels must be an integer >= 0"),
     ({"head_dilation": 0}, "head_dilation must be an integer >= 1, got 0"),
     ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
     ({"shuffle": "yes"}, "shuffle must be true or false"),
     ({"image_loss_weight": -1.0}, "image_loss_weight must be a number >= 0 (0 = off), got -1.0"),
     ({"em_warmup": -1}, "em_warmup must be an integer >= 0"),
     ({"em_warmup": 5}, "em_warmup=5 needs image_loss_weight > 0"),
     ({"backbone_args": 3}, "backbone_args must be a dict"), ({"backbone_args": {"no_such_arg": 1}}, "no_such_arg"),
     ({"out_index": 9}, "out_index"), ({"backbone": "no_such_net"}, "no_such_net"), ({"nope": 1}, "nope")],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_one_class_is_a_config_error_and_bad_labels_a_data_error():
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 2"):
        segbench.create_method("emadapt", 1, **TINY)
    model = build()
    images, _ = batch(2)
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)


# -- default network unchanged; the paper's DeepLab-LargeFOV ---------------------------------------------------
def old_network(head_channels: int = 0, head_dilation: int = 12, dropout: float = 0.0):
    """The network as built before ``largefov`` / ``lr_mults`` existed, layer by layer, from the same seed."""
    from torch import nn

    from segbench.nn.backbones import feature_backbone

    torch.manual_seed(0)
    backbone, channels = feature_backbone("emadapt", TINY["backbone"], TINY["out_index"], None, False, None, None)
    layers = []
    if head_channels:
        layers += [nn.Conv2d(channels, head_channels, 3, padding=head_dilation, dilation=head_dilation),
                   nn.ReLU(inplace=True), nn.Dropout2d(dropout),
                   nn.Conv2d(head_channels, head_channels, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout)]
        channels = head_channels
    elif dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.ModuleDict({"backbone": backbone, "head": nn.Sequential(*layers),
                          "classifier": nn.Conv2d(channels, C, 1)})


@pytest.mark.parametrize("options", [{}, {"head_channels": 16, "head_dilation": 2, "dropout": 0.5}])
def test_default_options_build_the_same_network_as_before(options):
    """largefov=False, lr_mults="head" (the defaults): same parameters, same outputs for a fixed seed."""
    model, old = build(**options).eval(), old_network(**options).eval()
    state = {k: v for k, v in model.state_dict().items() if k != "train_steps"}  # the warm-up counter buffer
    assert state.keys() == old.state_dict().keys()
    assert all(torch.equal(v, old.state_dict()[k]) for k, v in state.items())
    images = batch(2)[0]
    with torch.no_grad():
        expected = old["classifier"](old["head"](old["backbone"](images)[-1]))
        assert torch.equal(model(images), expected)
    assert model.param_multipliers(10.0) is None and not model.fc_pretrained


def test_new_options_are_late_options_so_quick_and_bench_ids_are_unchanged():
    from segbench.engine.config import identity_dict, resolve_config

    registry = get_registry()
    spec, shapes = registry.method("emadapt"), registry.dataset("shapes")
    assert spec.late_options == {"largefov": False, "lr_mults": "head"}
    assert all(spec.options[k] == v for k, v in spec.late_options.items())
    for recipe in ("quick", "bench"):
        model = identity_dict(resolve_config(spec, shapes, {}, recipe).to_dict(), late_options=spec.late_options)
        assert "largefov" not in model["model"] and "lr_mults" not in model["model"]
    paper = resolve_config(spec, shapes, {}, "paper")
    ident = identity_dict(paper.to_dict(), late_options=spec.late_options)["model"]
    assert ident["largefov"] is True and ident["lr_mults"] == "caffe"


def test_paper_network_is_deeplab_largefov_at_output_stride_8():
    from torch import nn

    from segbench.nn.vgg import LargeFOVHead

    spec = get_registry().method("emadapt")
    options = {**spec.recipes["paper"].model, "pretrained": False}
    torch.manual_seed(0)
    model = segbench.create_method("emadapt", 21, **options).eval()
    pools = [(m.kernel_size, m.stride) for m in model.backbone.children() if isinstance(m, nn.MaxPool2d)]
    assert pools == [(2, 2)] * 3 + [(3, 1)] * 2  # pool4 / pool5 stride 1
    convs = [m.dilation[0] for m in model.backbone.children() if isinstance(m, nn.Conv2d)]
    assert convs == [1] * 10 + [2] * 3  # conv5 dilated 2
    head = model.head
    assert isinstance(head, LargeFOVHead) and isinstance(head.pool5a, nn.AvgPool2d)
    assert head.fc6.weight.shape == (1024, 512, 3, 3) and head.fc6.dilation == (12, 12)
    assert head.fc7.weight.shape == (1024, 1024, 1, 1) and head.fc8.weight.shape == (21, 1024, 1, 1)
    assert head.drop6.p == 0.5 and not model.fc_pretrained  # pretrained=False: fc6 / fc7 random
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 96)).shape == (1, 21, 8, 12)  # output stride 8
        assert model.predict(torch.randn(1, 3, 40, 56))[0]["score_maps"].shape == (21, 40, 56)
    table = model.param_multipliers(10.0)  # lr_mults="caffe": x10 / x20 on fc8 only, biases without decay
    assert table["head.fc8.weight"] == (10.0, 1.0) and table["head.fc8.bias"] == (20.0, 0.0)
    assert table["head.fc6.weight"] == (1.0, 1.0) and table["head.fc7.bias"] == (2.0, 0.0)
    assert table["backbone.features_0.weight"] == (1.0, 1.0)
    from segbench.testing.checks import paper_recipe_problems

    assert paper_recipe_problems(spec) == []
    assert not any("stride 16" in line or "random (`pretrained`)" in line for line in spec.recipes["paper"].deviations)


def test_largefov_decimates_imagenet_fc6_fc7_when_pretrained(monkeypatch):
    """pretrained=True with the download stubbed: the backbone at random init, timm's classifier a stand-in;
    fc6/fc7 take every 4096/16 = 256th filter and the 3x3 taps of the stand-in's 3x3 kernel."""
    import timm
    from torch import nn

    from segbench.nn import backbones

    real = timm.create_model

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.pre_logits = nn.Module()
            self.pre_logits.fc1 = nn.Conv2d(512, 4096, 3)
            self.pre_logits.fc2 = nn.Conv2d(4096, 4096, 1)

    fake = Classifier()

    def create_model(name, pretrained=False, features_only=False, **options):
        if features_only:
            options.pop("pretrained_cfg_overlay", None)
            return real(name, pretrained=False, features_only=True, **options)
        return fake

    monkeypatch.setattr(backbones, "cached_or_online", lambda *a, **k: None)
    monkeypatch.setattr(timm, "create_model", create_model)
    model = build(backbone="vgg11", out_index=5, output_stride=8, pretrained=True, largefov=True, head_channels=16)
    assert model.fc_pretrained
    fc1, fc2 = fake.pre_logits.fc1, fake.pre_logits.fc2
    torch.testing.assert_close(model.head.fc6.weight[3], fc1.weight[3 * 256])
    torch.testing.assert_close(model.head.fc6.bias, fc1.bias[::256])
    torch.testing.assert_close(model.head.fc7.weight[2, 5], fc2.weight[512, 1280])
    assert not build(backbone="vgg11", out_index=5, largefov=True, head_channels=16).fc_pretrained  # not pretrained


def test_vgg_backbones_take_an_output_stride_without_largefov():
    model = build(backbone="vgg11", out_index=4, output_stride=8, head_channels=8).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, C, 8, 8)


@pytest.mark.parametrize(
    "options, message",
    [({"largefov": True}, "largefov=True needs a VGG backbone"),
     ({"largefov": True, "backbone": "vgg11", "out_index": 5}, "largefov=True needs head_channels > 0"),
     ({"largefov": True, "backbone": "vgg11", "out_index": 4, "head_channels": 8},
      "largefov=True needs the VGG cut at pool5 (out_index 5 or -1), got out_index=4"),
     ({"largefov": "yes"}, "largefov must be true or false"),
     ({"lr_mults": "fast"}, "lr_mults must be one of head, caffe, got 'fast'"),
     ({"backbone": "vgg11", "out_index": 5, "output_stride": 4}, "output_stride must be one of 8, 16, 32 or None")],
)
def test_bad_largefov_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build(**options)
    assert message in str(info.value) and "\n" not in str(info.value)
