"""The wildcat method: registration, multi-map class maps, k+/k- pooling, loss and option checks, on a tiny backbone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import segbench
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 5
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 class maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("wildcat", C, **{**TINY, **options})


def batch(n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


def test_spec_is_registered_from_the_entry_point_with_the_papers_values():
    spec = get_registry().method("wildcat")
    assert spec.supervision == "image" and spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "WILDCAT" in spec.paper and "CVPR 2017" in spec.paper
    assert {k: spec.options[k] for k in ("maps_per_class", "kmax", "kmin", "alpha")} == {
        "maps_per_class": 4, "kmax": 0.2, "kmin": None, "alpha": 0.7}
    paper = spec.recipes["paper"]
    assert paper.model["backbone"] == "resnet101" and paper.model["pretrained"] is True
    assert (paper.model["maps_per_class"], paper.model["kmax"], paper.model["kmin"], paper.model["alpha"]) == (
        8, 0.2, 0.2, 0.7)  # the authors' VOC 2007 demo (wildcat.pytorch README.md:25)
    assert paper.model["halve"] is True and spec.options["halve"] is False
    assert paper.train["batch_size"] == 16 and paper.train["eval_size"] == 448
    for recipe in spec.recipes.values():
        assert set(recipe.model) <= set(spec.options)
        assert all(isinstance(recipe.model.get(k, 0.5), float) for k in ("kmax", "kmin"))  # --set k=0.1 works
    assert get_registry().plugins["wildcat"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_wildcat; print('torch' in sys.modules)"
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
    p = model.predict(torch.randn(1, 3, 40, 56))[0]
    assert p["score_maps"].shape == (C, 10, 14) and p["scores"].shape == (C,)


def test_class_maps_are_the_mean_of_each_class_s_maps_class_major():
    """Transfer layer bias b[c*M + m] = c*M + m and zero weights: class map c = c*M + (M-1)/2 everywhere."""
    m = 3
    model = build(maps_per_class=m, kmax=2.0, kmin=1.0, alpha=0.5).eval()
    assert model.head.conv.out_channels == C * m
    with torch.no_grad():
        model.head.conv.weight.zero_()
        model.head.conv.bias.copy_(torch.arange(C * m, dtype=torch.float32))
    p = model.predict(torch.randn(1, 3, 32, 32))[0]
    expected = torch.arange(C, dtype=torch.float32) * m + (m - 1) / 2
    torch.testing.assert_close(p["score_maps"], expected[:, None, None].expand(C, 8, 8))
    torch.testing.assert_close(p["scores"], expected * 1.5)  # constant map: top-k mean + 0.5 x bottom-k mean


def test_pooling_of_a_hand_made_map():
    """A 4x4 map holding 1..16: k+ = 3 -> (16+15+14)/3 = 15; k- = 2 -> (1+2)/2 = 1.5; alpha 0.7 -> 16.05."""
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4).expand(1, C, 4, 4)
    for kmax, kmin in [(3.0, 2.0), (0.2, 0.1)]:  # 0.2 * 16 = 3.2 -> 3 regions, 0.1 * 16 = 1.6 -> 2 regions
        pool = build(kmax=kmax, kmin=kmin, alpha=0.7).pool
        torch.testing.assert_close(pool(x), torch.full((1, C), 16.05))
    torch.testing.assert_close(build(kmax=3.0, kmin=0, alpha=0.7).pool(x), torch.full((1, C), 15.0))
    torch.testing.assert_close(build(kmax=3.0, kmin=None, alpha=1.0).pool(x), torch.full((1, C), 17.0))  # kmin=kmax
    torch.testing.assert_close(build(kmax=100.0, kmin=0).pool(x), torch.full((1, C), 8.5))  # k > regions: all


@pytest.mark.parametrize("kmax, kmin, alpha", [(1.0, 0, 1.0), (3.0, 3.0, 0.7), (0.2, None, 0.7), (0.25, 0.1, 0.0)])
def test_scores_are_the_pooled_score_maps(kmax, kmin, alpha):
    model = build(kmax=kmax, kmin=kmin, alpha=alpha).eval()
    images, _ = batch(2)
    for p in model.predict(images):
        cells = p["score_maps"].flatten(1).sort(dim=1, descending=True).values  # [C, 64]
        k_hi = int(kmax) if kmax >= 1 else int(kmax * 64 + 0.5)
        k_lo = kmax if kmin is None else kmin
        k_lo = int(k_lo) if k_lo >= 1 or k_lo == 0 else int(k_lo * 64 + 0.5)
        expected = cells[:, :k_hi].mean(1)
        if k_lo:
            expected = expected + alpha * cells[:, -k_lo:].mean(1)
        torch.testing.assert_close(p["scores"], expected)


def test_loss_is_the_multilabel_soft_margin_loss():
    model = build().eval()  # eval: batch norm uses running stats, so forward is repeatable
    images, targets = batch(3)
    labels = torch.stack([t["labels"] for t in targets])
    scores, _ = model(images)
    torch.testing.assert_close(model.loss(images, targets)["loss"], nn.MultiLabelSoftMarginLoss()(scores, labels))


def test_labels_ignore_leaves_classes_out_of_the_loss():
    model = build().eval()
    images, targets = batch(2)
    ignore = torch.zeros(C, dtype=torch.bool)
    ignore[3] = True
    scores, _ = model(images)
    labels = torch.stack([t["labels"] for t in targets])
    per = nn.functional.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    keep = torch.ones_like(per, dtype=torch.bool)
    keep[0, 3] = False
    ignored = [{**targets[0], "labels_ignore": ignore}, targets[1]]
    torch.testing.assert_close(model.loss(images, ignored)["loss"], per[keep].mean())


def test_loss_backward_reaches_every_parameter_and_decreases():
    model = build().train()
    images, targets = batch(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for step in range(15):
        loss = model.loss(images, targets)["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss)
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
    [({"kmax": 0}, "kmax must be a fraction of the regions in (0, 1) or a whole count >= 1, got 0"),
     ({"kmax": -1.0}, "kmax must be a fraction"), ({"kmax": 2.5}, "kmax must be a fraction"),
     ({"kmax": "3"}, "kmax must be"), ({"kmax": float("nan")}, "kmax must be"),
     ({"kmin": -1}, "kmin must be 0 (off), a fraction of the regions in (0, 1) or a whole count >= 1, got -1"),
     ({"kmin": 1.5}, "kmin must be 0 (off)"),
     ({"alpha": -0.1}, "alpha must be a number >= 0, got -0.1"), ({"alpha": float("inf")}, "alpha must be"),
     ({"maps_per_class": 0}, "maps_per_class must be an integer >= 1, got 0"),
     ({"maps_per_class": 2.0}, "maps_per_class must be an integer >= 1"),
     ({"dropout": 1.0}, "dropout must be in [0, 1), got 1.0"),
     ({"backbone_args": 3}, "backbone_args must be a dict"),
     ({"backbone_args": {"no_such_arg": 1}}, "no_such_arg"), ({"out_index": 9}, "out_index"),
     ({"backbone": "no_such_net"}, "no_such_net"), ({"nope": 1}, "nope")],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labels_of_the_wrong_size_are_a_data_error():
    model = build()
    images, _ = batch(2)
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)



def test_halve_divides_max_plus_alpha_min_by_two_as_the_authors_pooling():
    """A hand-made 2x2 map [[4, -2], [1, 0]]: k+ = k- = 1, alpha 0.7 -> 4 + 0.7 x (-2) = 2.6; halved 1.3."""
    maps = torch.tensor([[4.0, -2.0], [1.0, 0.0]]).expand(1, C, 2, 2)
    for halve, expected in [(False, 2.6), (True, 1.3)]:
        model = build(kmax=1.0, kmin=1.0, alpha=0.7, halve=halve).eval()
        model.class_maps = lambda images: maps  # the pooling alone, on the hand-made map
        scores, _ = model(torch.zeros(1, 3, 32, 32))
        torch.testing.assert_close(scores, torch.full((1, C), expected))
    # no min term (kmin 0 or alpha 0): the authors' code does not halve either (wildcat/pooling.py:41-43)
    for options in ({"kmin": 0}, {"kmin": 1.0, "alpha": 0.0}):
        model = build(kmax=1.0, halve=True, **options).eval()
        model.class_maps = lambda images: maps
        torch.testing.assert_close(model(torch.zeros(1, 3, 32, 32))[0], torch.full((1, C), 4.0))
    with pytest.raises(ConfigError, match="halve must be true or false"):
        build(halve=1)
