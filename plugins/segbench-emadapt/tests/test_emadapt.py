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
