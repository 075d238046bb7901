"""The weldon method: registration, outputs, losses and pooling options, on a tiny backbone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 7
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 class maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("weldon", C, **{**TINY, **options})


def batch(n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


def test_spec_is_registered_from_the_entry_point():
    spec = get_registry().method("weldon")
    assert spec.supervision == "image"
    assert spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "WELDON" in spec.paper and "CVPR 2016" in spec.paper
    for recipe in spec.recipes.values():
        assert set(recipe.model) <= set(spec.options)
    assert spec.recipes["paper"].model["pretrained"] is True
    assert get_registry().plugins["weldon"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_weldon; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_predict_outputs_keys_shapes_dtypes():
    model = build().eval()
    images, _ = batch(3)
    predictions = model.predict(images)
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"scores", "score_maps"}
        assert p["scores"].shape == (C,) and p["scores"].dtype == torch.float32
        assert p["score_maps"].shape == (C, 8, 8) and p["score_maps"].dtype == torch.float32
        assert torch.isfinite(p["scores"]).all() and torch.isfinite(p["score_maps"]).all()


def test_any_image_size_and_maps_per_class():
    model = build(maps_per_class=3).eval()
    p = model.predict(torch.randn(1, 3, 40, 56))[0]
    assert p["score_maps"].shape == (C, 10, 14) and p["scores"].shape == (C,)
    assert model.head.conv.out_channels == 3 * C


@pytest.mark.parametrize("kmax, kmin, alpha", [(1, 0, 1.0), (3, 3, 1.0), (0.25, 0.1, 0.7), (64, 0, 1.0)])
def test_scores_are_the_pooled_score_maps(kmax, kmin, alpha):
    model = build(kmax=kmax, kmin=kmin, alpha=alpha).eval()
    images, _ = batch(2)
    for p in model.predict(images):
        cells = p["score_maps"].flatten(1).sort(dim=1, descending=True).values  # [C, 64]
        k_hi = kmax if kmax >= 1 else round(kmax * 64)
        k_lo = kmin if kmin >= 1 or kmin == 0 else round(kmin * 64)
        expected = cells[:, :min(k_hi, 64)].mean(1)
        if k_lo:
            expected = expected + alpha * cells[:, -k_lo:].mean(1)
        torch.testing.assert_close(p["scores"], expected)


def test_kmax_and_kmin_options_move_the_scores_as_expected():
    images, _ = batch(2)
    scores = {}
    for key, opts in {"max": dict(kmax=1, kmin=0), "top5": dict(kmax=5, kmin=0), "avg": dict(kmax=64, kmin=0),
                      "max+min": dict(kmax=1, kmin=1)}.items():
        model = build(**opts).eval()  # same seed: same weights, only the pooling differs
        scores[key] = torch.stack([p["scores"] for p in model.predict(images)])
        maps = torch.stack([p["score_maps"] for p in model.predict(images)])
    assert (scores["max"] >= scores["top5"]).all() and (scores["top5"] >= scores["avg"]).all()
    assert (scores["max"] > scores["avg"]).any()
    torch.testing.assert_close(scores["max"], maps.amax((2, 3)))
    torch.testing.assert_close(scores["avg"], maps.mean((2, 3)))
    torch.testing.assert_close(scores["max+min"], maps.amax((2, 3)) + maps.amin((2, 3)))


@pytest.mark.parametrize("loss", ["bce", "margin"])
def test_loss_value_matches_its_formula(loss):
    model = build(loss=loss).eval()  # eval: batch norm uses running stats, so forward is repeatable
    images, targets = batch(3)
    labels = torch.stack([t["labels"] for t in targets])
    scores, _ = model(images)
    if loss == "bce":
        expected = F.binary_cross_entropy_with_logits(scores, labels)
    else:
        expected = torch.clamp(1 - (2 * labels - 1) * scores, min=0).mean()
    torch.testing.assert_close(model.loss(images, targets)["loss"], expected)


def test_labels_ignore_leaves_classes_out_of_the_loss():
    model = build().eval()
    images, targets = batch(2)
    ignore = torch.zeros(C, dtype=torch.bool)
    ignore[3] = True
    ignored = [{**targets[0], "labels_ignore": ignore}, targets[1]]  # only the first image has the key
    scores, _ = model(images)
    labels = torch.stack([t["labels"] for t in targets])
    per = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    keep = torch.ones_like(per, dtype=torch.bool)
    keep[0, 3] = False
    torch.testing.assert_close(model.loss(images, ignored)["loss"], per[keep].mean())


@pytest.mark.parametrize("loss", ["bce", "margin"])
def test_loss_is_finite_and_decreases_on_a_tiny_batch(loss):
    model = build(loss=loss).train()
    images, targets = batch(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for _ in range(15):
        out = model.loss(images, targets)
        assert set(out) == {"loss"} and out["loss"].dim() == 0
        assert torch.isfinite(out["loss"])
        optimizer.zero_grad()
        out["loss"].backward()
        if not values:  # the first step's gradients reach the backbone
            assert all(p.grad is not None for p in model.backbone.parameters())
            assert sum(float(p.grad.abs().sum()) for p in model.backbone.parameters()) > 0
        optimizer.step()
        values.append(float(out["loss"].detach()))
    assert values[-1] < 0.5 * values[0]


def test_backbone_args_reach_timm():
    model = build(backbone_args={"channels": (16, 24, 24, 24), "zero_init_last": False})
    assert model.backbone.feature_info.channels() == [16]  # out_index 1: the first stage
    assert model.head.conv.in_channels == 16
    assert torch.all(model.backbone.layer1[0].bn2.weight != 0)  # timm zero-initialises it by default
    assert torch.all(build().backbone.layer1[0].bn2.weight == 0)


@pytest.mark.parametrize(
    "options, match",
    [({"loss": "hinge2"}, "loss"), ({"kmax": 2.5}, "kmax"), ({"kmin": -1}, "kmin"),
     ({"maps_per_class": 0}, "maps_per_class"), ({"nope": 1}, "nope"),
     ({"backbone_args": {"no_such_arg": 1}}, "no_such_arg"), ({"backbone_args": 3}, "backbone_args"),
     ({"out_index": 9}, "out_index"), ({"backbone": "no_such_net"}, "no_such_net")],
)
def test_bad_options_are_config_errors(options, match):
    with pytest.raises(ConfigError, match=match):
        build(**options)


def test_labels_of_the_wrong_size_are_a_data_error():
    model = build()
    images, _ = batch(2)
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)



def test_halve_divides_max_plus_min_by_two_as_the_authors_pytorch_pooling():
    """A hand-made 2x2 map [[4, 1], [2, 0]]: k = 1 -> max 4 + min 0 = 4, halved 2; k = 2 -> 3 + 0.5, halved 1.75."""
    maps = torch.tensor([[4.0, 1.0], [2.0, 0.0]]).expand(1, C, 2, 2)
    for halve, kmax, expected in [(False, 1.0, 4.0), (True, 1.0, 2.0), (False, 2.0, 3.5), (True, 2.0, 1.75)]:
        model = build(kmax=kmax, kmin=kmax, halve=halve).eval()
        model.class_maps = lambda images: maps  # the pooling alone, on the hand-made map
        scores, _ = model(torch.zeros(1, 3, 32, 32))
        torch.testing.assert_close(scores, torch.full((1, C), expected))
    model = build(kmax=1.0, kmin=0, halve=True).eval()  # no min term: not halved
    model.class_maps = lambda images: maps
    torch.testing.assert_close(model(torch.zeros(1, 3, 32, 32))[0], torch.full((1, C), 4.0))
    with pytest.raises(ConfigError, match="halve must be true or false"):
        build(halve="yes")


def test_halve_is_off_by_default_and_in_the_paper_recipe():
    """Off by default (quick / bench unchanged); the paper recipe follows the Torch code its values come from."""
    spec = get_registry().method("weldon")
    assert spec.options["halve"] is False
    assert all(not recipe.model.get("halve", False) for recipe in spec.recipes.values())
    assert "WeldonPooling.lua:66" in spec.recipes["paper"].sources["halve"]
