"""The lse and spleap methods: registration, pooling math, stability, gradients, options and outputs."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import segbench
from segbench.errors import ConfigError
from segbench.plugins import get_registry
from segbench_lse.pooling import LSEPool2d, SoftmaxPool2d, lse_pool2d, softmax_pool2d

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 7
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 maps


def build(method: str, **options):
    torch.manual_seed(0)
    return segbench.create_method(method, C, **{**TINY, **options})


def batch(n: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
        labels[i, 1 + (i + 2) % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


# -- registration ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, paper", [("lse", "Pinheiro"), ("spleap", "SPLeaP")])
def test_specs_are_registered_from_the_entry_point(name, paper):
    spec = get_registry().method(name)
    assert spec.supervision == "image" and spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert paper in spec.paper
    assert spec.recipes["paper"].model["pretrained"] is True
    assert get_registry().plugins["lse"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_lse; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- pooling math -----------------------------------------------------------------------------------------------------
def test_lse_and_softmax_pooling_match_hand_computed_values():
    x = torch.tensor([0.0, 0.0, 0.0, math.log(5.0)]).view(1, 1, 2, 2)
    # beta 1: log(mean(1, 1, 1, 5)) = log 2
    assert lse_pool2d(x, 1.0).item() == pytest.approx(math.log(2.0), abs=1e-6)
    # beta 2 on x / 2: (1/2) log(mean(1, 1, 1, 5)) = log(2) / 2
    assert lse_pool2d(x / 2, 2.0).item() == pytest.approx(math.log(2.0) / 2, abs=1e-6)
    # softmax weights (1, 1, 1, 5) / 8 on the values: 5/8 log 5
    assert softmax_pool2d(x, 1.0).item() == pytest.approx(5 / 8 * math.log(5.0), abs=1e-6)


def test_pooling_goes_from_average_to_max_with_beta():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mean, top = x.mean((2, 3)), x.amax((2, 3))
    torch.testing.assert_close(lse_pool2d(x, 1e-6), mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(softmax_pool2d(x, 1e-6), mean, atol=1e-5, rtol=0)
    # at large beta LSE tends to max - log(n) / beta
    torch.testing.assert_close(lse_pool2d(x, 1e4), top - math.log(20) / 1e4, atol=1e-6, rtol=0)
    torch.testing.assert_close(softmax_pool2d(x, 1e4), top, atol=1e-6, rtol=0)
    values = [lse_pool2d(x, b) for b in (0.1, 1.0, 10.0)]
    assert (values[0] <= values[1]).all() and (values[1] <= values[2]).all()  # monotone in beta


def test_per_channel_beta():
    x = torch.randn(2, 3, 4, 4)
    beta = torch.tensor([0.5, 2.0, 8.0])
    out = lse_pool2d(x, beta)
    for c in range(3):
        torch.testing.assert_close(out[:, c], lse_pool2d(x[:, c:c + 1], float(beta[c]))[:, 0])


def test_lse_equals_the_naive_formula_at_small_beta():
    x = torch.rand(4, 5, 6, 6, generator=torch.Generator().manual_seed(2)) * 9 + 1  # values in [1, 10]
    for beta in (0.5, 1.0, 5.0):
        naive = torch.log(torch.exp(beta * x).mean((2, 3))) / beta
        torch.testing.assert_close(lse_pool2d(x, beta), naive, atol=1e-5, rtol=1e-6)


def test_lse_is_stable_at_large_beta_where_the_naive_formula_overflows():
    x = torch.rand(4, 5, 6, 6, generator=torch.Generator().manual_seed(3)) * 9 + 1
    beta = 100.0
    naive = torch.log(torch.exp(beta * x).mean((2, 3))) / beta
    assert torch.isinf(naive).all()  # float32 exp overflows past ~88.7
    x.requires_grad_(True)
    out = lse_pool2d(x, beta)
    reference = (torch.logsumexp(beta * x.detach().double().flatten(2), -1) - math.log(36)) / beta
    torch.testing.assert_close(out.double(), reference, atol=1e-5, rtol=0)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    torch.testing.assert_close(x.grad.sum((2, 3)), torch.ones(4, 5), atol=1e-4, rtol=0)  # softmax weights sum to 1


def test_gradients_of_both_poolings_pass_gradcheck_including_beta():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    beta = torch.tensor([0.7, 2.0, 5.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lse_pool2d, (x, beta))
    assert torch.autograd.gradcheck(softmax_pool2d, (x, beta))
    assert torch.autograd.gradcheck(lambda t: lse_pool2d(t, 50.0), (x,))


def test_learnable_beta_stays_positive_and_gets_gradients():
    pool = LSEPool2d(3.0, learnable=True)
    assert isinstance(pool.log_beta, torch.nn.Parameter) and pool.beta.item() == pytest.approx(3.0)
    pool(torch.randn(2, 3, 4, 4)).sum().backward()
    assert pool.log_beta.grad is not None and torch.isfinite(pool.log_beta.grad)
    with torch.no_grad():
        pool.log_beta.fill_(-40.0)  # an optimiser step could go anywhere: beta stays > 0
    assert pool.beta.item() > 0 and torch.isfinite(pool(torch.randn(1, 1, 2, 2))).all()
    fixed = SoftmaxPool2d(2.0, learnable=False, channels=5)
    assert not list(fixed.parameters()) and fixed.beta.shape == (5,)


# -- models -------------------------------------------------------------------------------------------------------
def test_lse_predict_shapes_and_scores_are_the_lse_of_the_maps():
    model = build("lse", beta=4.0).eval()
    images, _ = batch(2)
    predictions = model.predict(images)
    assert len(predictions) == 2
    for p in predictions:
        assert set(p) == {"scores", "score_maps"}
        assert p["scores"].shape == (C,) and p["score_maps"].shape == (C, 8, 8)
        torch.testing.assert_close(p["scores"], lse_pool2d(p["score_maps"][None], 4.0)[0])
    assert build("lse").predict(torch.randn(1, 3, 40, 56))[0]["score_maps"].shape == (C, 10, 14)


def test_lse_learn_beta_makes_beta_a_parameter():
    assert "pool.log_beta" in dict(build("lse", learn_beta=True).named_parameters())
    assert "pool.log_beta" not in dict(build("lse").named_parameters())


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_lse_loss_matches_its_formula(loss):
    model = build("lse", loss=loss).eval()
    images, targets = batch(3)
    labels = torch.stack([t["labels"] for t in targets])
    scores, _ = model(images)
    if loss == "bce":
        expected = F.binary_cross_entropy_with_logits(scores, labels)
    else:  # two labels per image: the target puts 1/2 on each
        expected = -(labels / 2 * F.log_softmax(scores, 1)).sum(1).mean()
    torch.testing.assert_close(model.loss(images, targets)["loss"], expected)


def test_spleap_scores_maps_and_parts():
    model = build("spleap", num_parts=5).eval()
    images, _ = batch(2)
    parts = model.part_maps(images)
    assert parts.shape == (2, 5, 8, 8)
    scores, maps = model(images)
    expected_scores = model.classifier(softmax_pool2d(parts, model.pool.beta))
    torch.testing.assert_close(scores, expected_scores)
    w, b = model.classifier.weight, model.classifier.bias
    torch.testing.assert_close(maps, torch.einsum("cp,bphw->bchw", w, parts) + b[None, :, None, None])
    p = model.predict(images)[0]
    assert p["scores"].shape == (C,) and p["score_maps"].shape == (C, 8, 8)


def test_spleap_at_tiny_beta_the_class_maps_average_to_the_scores():
    model = build("spleap", beta=1e-6, learn_beta=False).eval()  # soft pooling = average: everything is linear
    scores, maps = model(batch(2)[0])
    torch.testing.assert_close(maps.mean((2, 3)), scores, atol=1e-5, rtol=1e-5)


def test_spleap_options_change_the_model():
    model = build("spleap", num_parts=4, part_hidden=6, part_pool="lse")
    assert [m.out_channels for m in model.parts if isinstance(m, torch.nn.Conv2d)] == [6, 4]
    assert isinstance(model.pool, LSEPool2d) and model.pool.beta.shape == (4,)
    model.loss(*batch(2))["loss"].backward()
    assert model.pool.log_beta.grad is not None and model.pool.log_beta.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "method, options, match",
    [("lse", {"beta": 0}, r"lse: beta must be a number in \(0, inf\), got 0"),
     ("lse", {"beta": -2.5}, r"beta must be a number in \(0, inf\), got -2.5"),
     ("lse", {"beta": "big"}, r"beta must be a number in \(0, inf\)"),
     ("lse", {"beta": float("inf")}, r"beta must be a number in \(0, inf\)"),
     ("lse", {"learn_beta": "yes"}, "learn_beta must be true or false"),
     ("lse", {"loss": "hinge"}, "loss must be one of bce, softmax"),
     ("lse", {"dropout": 1.5}, r"dropout must be a number in \[0, 0.99\]"),
     ("lse", {"backbone": "no_such_net"}, "no_such_net"),
     ("spleap", {"beta": 0.0}, r"spleap: beta must be a number in \(0, inf\)"),
     ("spleap", {"num_parts": 0}, "num_parts must be an integer >= 1, got 0"),
     ("spleap", {"num_parts": 2.5}, "num_parts must be an integer >= 1"),
     ("spleap", {"part_hidden": -1}, "part_hidden must be an integer >= 0"),
     ("spleap", {"part_pool": "max"}, "part_pool must be one of softmax, lse"),
     ("spleap", {"nope": 1}, "nope")],
)
def test_bad_options_are_one_line_config_errors(method, options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build(method, **options)
    assert "\n" not in str(info.value)
