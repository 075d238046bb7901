"""Tests of the FCN plugin: registration, outputs, bilinear upsampling, skip init, loss."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from segbench.engine.config import TrainConfig
from segbench.errors import ConfigError
from segbench.nn.upsample import BilinearUpsample, bilinear_kernel, bilinear_weight
from segbench_fcn import OPTIONS, method_specs
from segbench_fcn.model import FCN

os.environ.setdefault("HF_HUB_OFFLINE", "1")
TINY = {"backbone": "test_resnet", "fc_channels": 16, "fc_kernel": 3, "dropout": 0.0}
C = 5


def tiny(variant: str, seed: int = 0, **options) -> FCN:
    torch.manual_seed(seed)
    return FCN(C, variant=variant, **{**TINY, **options})


def batch(b: int = 2, h: int = 50, w: int = 70, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(b, 3, h, w, generator=g)
    targets = [{"mask": torch.randint(0, C, (h, w), generator=g)} for _ in range(b)]
    return images, targets


# -- registration ------------------------------------------------------------------
def test_registers_three_methods_through_the_entry_point():
    from segbench.plugins import Registry

    registry = Registry().load()
    assert {"fcn32s", "fcn16s", "fcn8s"} <= set(registry.methods)
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        spec = registry.methods[name]
        spec.validate()
        assert spec.plugin == "fcn"
        assert spec.supervision == "pixel"
        assert spec.outputs == {"mask", "score_maps", "scores"}
        assert set(spec.recipes) == {"quick", "bench", "paper"} | ({"staged"} if spec.name != "fcn32s" else set())
        assert spec.options == OPTIONS
        train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
        for recipe in spec.recipes.values():
            assert set(recipe.train) <= train_keys, (name, recipe.name, set(recipe.train) - train_keys)
            assert set(recipe.model) <= set(spec.options)
    paper = registry.methods["fcn8s"].recipes["paper"]
    assert paper.model["backbone"] == "vgg16" and paper.model["pretrained"] is True
    assert paper.train["batch_size"] == 1 and paper.train["momentum"] == 0.99


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, segbench_fcn; segbench_fcn.method_specs(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_through_the_spec_uses_the_variant():
    specs = {s.name: s for s in method_specs()}
    model = specs["fcn16s"].build(C, **{**OPTIONS, **TINY})
    assert model.variant == "16s" and hasattr(model, "score_pool4") and not hasattr(model, "score_pool3")


# -- outputs -------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["32s", "16s", "8s"])
@pytest.mark.parametrize("size", [(50, 70), (64, 96), (33, 33)])
def test_predict_keys_shapes_dtypes(variant, size):
    model = tiny(variant).eval()
    torch.nn.init.normal_(model.score_fr.weight, std=0.5)
    images, _ = batch(3, *size)
    predictions = model.predict(images)
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"mask", "score_maps", "scores"}
        assert p["score_maps"].shape == (C, *size) and p["score_maps"].dtype == torch.float32
        assert p["mask"].shape == size and p["mask"].dtype == torch.int64
        assert p["scores"].shape == (C,) and p["scores"].dtype == torch.float32
        torch.testing.assert_close(p["score_maps"].sum(0), torch.ones(size))
        assert torch.equal(p["mask"], p["score_maps"].argmax(0))
        torch.testing.assert_close(p["scores"], p["score_maps"].amax(dim=(1, 2)))
    assert model(images).shape == (3, C, *size)


# -- bilinear upsampling ---------------------------------------------------------------
def test_bilinear_kernel_matches_the_reference_formula():
    # FCN surgery.upsample_filt(4): outer product of [0.25, 0.75, 0.75, 0.25]
    ramp = torch.tensor([0.25, 0.75, 0.75, 0.25])
    torch.testing.assert_close(bilinear_kernel(2), torch.outer(ramp, ramp))
    assert bilinear_kernel(3).shape == (5, 5) and bilinear_kernel(3)[2, 2] == 1.0
    weight = bilinear_weight(3, 3, 2)
    assert torch.equal(weight[0, 1], torch.zeros(4, 4)) and torch.equal(weight[2, 2], bilinear_kernel(2))
    with pytest.raises(ValueError):
        bilinear_kernel(0)


@pytest.mark.parametrize("factor", [2, 3, 8, 32])
@pytest.mark.parametrize("size", [(1, 1), (5, 7)])
def test_bilinear_upsample_init_equals_interpolate(factor, size):
    x = torch.randn(2, 4, *size)
    up = BilinearUpsample(4, factor)
    expected = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    torch.testing.assert_close(up(x), expected, atol=1e-5, rtol=1e-5)
    assert up.weight.requires_grad
    assert not BilinearUpsample(4, factor, learnable=False).weight.requires_grad


def test_model_upsampling_layers_start_bilinear_and_follow_learn_option():
    model = tiny("8s")
    for layer in (model.upscore2, model.upscore_pool4):
        assert torch.equal(layer.weight, bilinear_weight(C, C, 2))
        assert layer.weight.requires_grad
    frozen = tiny("8s", learn_upsampling=False)
    assert not frozen.upscore2.weight.requires_grad and not frozen.upscore_pool4.weight.requires_grad


# -- skip initialisation --------------------------------------------------------------------
def test_zero_init_skips_make_16s_and_8s_start_as_32s():
    """At init the skip scorers add nothing: 16s/8s = 32s's coarse scores upsampled x2 (x2) then to the input."""
    m32 = tiny("32s").eval()
    torch.nn.init.normal_(m32.score_fr.weight, std=0.5)
    torch.nn.init.normal_(m32.score_fr.bias, std=0.5)
    coarse = {}
    m32.score_fr.register_forward_hook(lambda mod, inp, out: coarse.__setitem__("s", out))
    images, _ = batch(2, 64, 96)
    out32 = m32(images)
    s = coarse["s"]
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)  # noqa: E731
    to_input = lambda t: F.interpolate(t, size=(64, 96), mode="bilinear", align_corners=False)  # noqa: E731
    torch.testing.assert_close(out32, to_input(s))
    for variant, expected in (("16s", to_input(up(s))), ("8s", to_input(up(up(s))))):
        model = tiny(variant, seed=1).eval()
        missing, unexpected = model.load_state_dict(m32.state_dict(), strict=False)
        assert not unexpected
        assert {k.split(".")[0] for k in missing} == (
            {"upscore2", "score_pool4"} | ({"upscore_pool4", "score_pool3"} if variant == "8s" else set())
        )
        for name in ("score_pool4", "score_pool3"):
            if hasattr(model, name):
                assert not getattr(model, name).weight.any() and not getattr(model, name).bias.any()
        out = model(images)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        # same decisions as FCN-32s on nearly every pixel (only the upsampling path differs)
        assert (out.argmax(1) == out32.argmax(1)).float().mean() > 0.9


def test_skip_scorers_receive_gradient():
    model = tiny("8s").train()
    images, targets = batch()
    model.loss(images, targets)["loss"].backward()
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert getattr(model, name).weight.grad.abs().sum() > 0, name


def test_vgg_pool_taps_use_pool3_and_pool4():
    model = FCN(C, variant="8s", backbone="vgg11", fc_channels=8, fc_kernel=3, dropout=0.0)
    assert model.pool_taps
    assert model.score_pool3.in_channels == 256 and model.score_pool4.in_channels == 512
    images, _ = batch(1, 64, 64)
    features = model.backbone(images)
    assert model._tap(features, 8).shape[-2:] == (8, 8)
    assert model._tap(features, 16).shape[-2:] == (4, 4)
    assert model._tap(features, 32).shape[-2:] == (2, 2)


def test_non_vgg_backbones_use_stage_taps_unless_asked():
    auto = tiny("8s")  # test_resnet: channels 32, 32, 48, 192, 96 at strides 2, 4, 8, 16, 32
    assert not auto.pool_taps
    assert (auto.score_pool3.in_channels, auto.score_pool4.in_channels, auto.fc6.in_channels) == (48, 192, 96)
    pooled = tiny("8s", taps="pool")
    assert (pooled.score_pool3.in_channels, pooled.score_pool4.in_channels) == (32, 48)


def test_vgg_classifier_weights_are_copied_when_shapes_match(monkeypatch):
    import timm

    model = tiny("32s", fc_channels=6, fc_kernel=3)
    other = tiny("32s", fc_channels=6, fc_kernel=3)
    fc6_in = model.fc6.in_channels

    class Classifier(torch.nn.Module):
        def __init__(self, width, kernel):
            super().__init__()
            self.pre_logits = torch.nn.Module()
            self.pre_logits.fc1 = torch.nn.Conv2d(fc6_in, width, kernel)
            self.pre_logits.fc2 = torch.nn.Conv2d(width, width, 1)

    fake = Classifier(6, 3)
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: fake)
    model._load_vgg_classifier("vgg16", False, "unused.pth", 6, 3)
    assert torch.equal(model.fc6.weight, fake.pre_logits.fc1.weight)
    assert torch.equal(model.fc7.bias, fake.pre_logits.fc2.bias)
    before = other.fc6.weight.clone()
    monkeypatch.setattr(timm, "create_model", lambda *a, **k: Classifier(6, 1))  # fc6 shape differs
    other._load_vgg_classifier("vgg16", False, "unused.pth", 6, 3)
    assert torch.equal(other.fc6.weight, before)


# -- loss -------------------------------------------------------------------------------
def test_loss_ignores_255_and_matches_cross_entropy_on_labelled_pixels():
    model = tiny("8s").eval()
    torch.nn.init.normal_(model.score_fr.weight, std=0.5)
    images, targets = batch(2, 40, 48)
    targets[0]["mask"][:20] = 255
    targets[1]["mask"][:, :10] = 255
    logits = model(images)
    masks = torch.stack([t["mask"] for t in targets])
    keep = masks != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], masks[keep])
    loss = model.loss(images, targets)["loss"]
    torch.testing.assert_close(loss, expected)
    summed = tiny("8s", loss_reduction="sum").eval()
    summed.load_state_dict(model.state_dict())
    torch.testing.assert_close(summed.loss(images, targets)["loss"], expected * keep.sum(), rtol=1e-4, atol=1e-3)


def test_all_void_target_gives_zero_loss_and_zero_gradient():
    model = tiny("8s").train()
    images, _ = batch(2, 40, 40)
    targets = [{"mask": torch.full((40, 40), 255, dtype=torch.int64)} for _ in range(2)]
    loss = model.loss(images, targets)["loss"]
    assert loss.item() == 0.0
    loss.backward()
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def test_loss_rejects_masks_of_another_size():
    model = tiny("32s")
    images, _ = batch(1, 40, 40)
    with pytest.raises(ValueError, match="target masks"):
        model.loss(images, [{"mask": torch.zeros(32, 40, dtype=torch.int64)}])


def test_loss_decreases_in_a_few_steps():
    model = tiny("8s").train()
    images, targets = batch(4, 48, 48)
    # a learnable target: the class is the quadrant
    quadrant = torch.zeros(48, 48, dtype=torch.int64)
    quadrant[:24, 24:], quadrant[24:, :24], quadrant[24:, 24:] = 1, 2, 3
    targets = [{"mask": quadrant} for _ in range(4)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    history = []
    for _ in range(8):
        loss = model.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert history[-1] < 0.8 * history[0], history


# -- options ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"taps": "middle"}, "taps must be one of"),
        ({"fc_kernel": 4}, "fc_kernel must be a positive odd integer"),
        ({"loss_reduction": "avg"}, "loss_reduction"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny("8s", **options)


def test_backbone_without_the_needed_strides_is_a_config_error():
    with pytest.raises(ConfigError, match="no feature map at stride 32"):
        FCN(C, variant="8s", backbone="test_vit", fc_channels=8, fc_kernel=3)



def test_paper_recipes_train_on_whole_images_of_trainaug_and_fcn16s_says_it_has_no_reference():
    from segbench.plugins import get_registry

    registry = get_registry()
    for name in ("fcn32s", "fcn16s", "fcn8s"):
        paper = registry.method(name).recipes["paper"]
        assert paper.train["crop_size"] == 0 and paper.train["batch_size"] == 1  # voc_layers.py: whole images
        assert paper.train["train_split"] == "trainaug"
    assert registry.method("fcn32s").recipes["paper"].train["steps"] == 100_000
    fcn16s = registry.method("fcn16s").recipes["paper"]
    assert any("the `staged` recipe" in line and "--init" in line for line in fcn16s.deviations)
    assert fcn16s.sources["lr"].startswith("deviation") and fcn16s.sources["pool4_scale"].startswith("deviation")
    assert not registry.method("fcn8s").recipes["paper"].sources["lr"].startswith("deviation")  # voc-fcn8s-atonce
