"""Tests of the dense CRF post-processor: registration, refinement, unary choice, options, engine runs."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from segbench import create_postprocessor
from segbench.errors import ConfigError, DataError
from segbench_densecrf import OPTIONS

H, W, EDGE = 40, 48, 20


def two_regions(noise: float = 1.2, seed: int = 0):
    """A red left part and a blue right part, and noisy softmax probabilities of the true split."""
    truth = torch.zeros(H, W, dtype=torch.long)
    truth[:, EDGE:] = 1
    image = torch.zeros(3, H, W, dtype=torch.uint8)
    image[0, :, :EDGE] = 200
    image[2, :, EDGE:] = 200
    g = torch.Generator().manual_seed(seed)
    logits = torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1).float() + noise * torch.randn(2, H, W, generator=g)
    return image, truth, logits


# -- registration -------------------------------------------------------------------
def test_registered_through_the_entry_point():
    from segbench.plugins import Registry

    spec = Registry().load().postprocessors["densecrf"]
    spec.validate()
    assert spec.plugin == "densecrf"
    assert spec.requires_outputs == {"score_maps"} and spec.gives_outputs == {"mask"}
    assert spec.options == OPTIONS
    assert (OPTIONS["iterations"], OPTIONS["bilateral_weight"], OPTIONS["theta_alpha"], OPTIONS["theta_beta"],
            OPTIONS["gaussian_weight"], OPTIONS["theta_gamma"]) == (10, 4.0, 121.0, 5.0, 3.0, 3.0)


def test_importing_the_plugin_does_not_import_torch_or_numpy():
    code = ("import sys, segbench_densecrf; segbench_densecrf.postprocessor_spec(); "
            "print(any(m in sys.modules for m in ('torch', 'numpy', 'pydensecrf')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- what the CRF does ----------------------------------------------------------------
def test_crf_follows_the_colour_boundary_better_than_the_argmax():
    image, truth, logits = two_regions()
    probs = logits.softmax(0)
    out = create_postprocessor("densecrf")(image, {"score_maps": probs, "scores": torch.ones(2)})
    before = (probs.argmax(0) == truth).float().mean().item()
    after = (out["mask"] == truth).float().mean().item()
    assert before < 0.8  # the noise flips about a quarter of the pixels
    assert after > 0.99  # 0.9995 measured: one pixel off
    assert out["mask"].dtype == torch.int64 and out["mask"].shape == (H, W)
    assert torch.equal(out["scores"], torch.ones(2)) and torch.equal(out["score_maps"], probs)  # other keys kept
    q = out["mask_scores"]  # the CRF's marginals: distributions whose argmax is the mask
    torch.testing.assert_close(q.sum(0), torch.ones(H, W), atol=1e-5, rtol=0)
    assert torch.equal(q.argmax(0), out["mask"])


def test_output_is_deterministic():
    image, _, logits = two_regions(seed=3)
    post = create_postprocessor("densecrf")
    first = post(image, {"score_maps": logits.softmax(0)})
    second = create_postprocessor("densecrf")(image, {"score_maps": logits.softmax(0)})
    assert torch.equal(first["mask_scores"], second["mask_scores"]) and torch.equal(first["mask"], second["mask"])


def test_without_pairwise_terms_the_marginals_are_the_unary_probabilities():
    image, _, logits = two_regions(seed=1)
    probs = logits.softmax(0)
    post = create_postprocessor("densecrf", bilateral_weight=0, gaussian_weight=0, iterations=3)
    out = post(image, {"score_maps": probs})
    torch.testing.assert_close(out["mask_scores"], probs, atol=1e-5, rtol=0)


def test_unary_sources():
    from segbench_densecrf.crf import choose_unary

    _, _, logits = two_regions()
    probs = logits.softmax(0)
    assert choose_unary({"score_maps": probs}, "auto", "pixel") == "probs"
    assert choose_unary({"score_maps": logits}, "auto", "pixel") == "softmax"
    assert choose_unary({"score_maps": logits.abs()}, "auto", "instance") == "probs"  # non-negative, unnormalised
    assert choose_unary({"score_maps": logits, "mask_scores": probs}, "auto", "image") == "scores"
    with pytest.raises(DataError, match="apply cam_mask before densecrf"):
        choose_unary({"score_maps": logits}, "auto", "image")
    with pytest.raises(DataError, match="unary=scores needs 'mask_scores'"):
        choose_unary({"score_maps": logits}, "scores", None)
    # softmax of logits and the probabilities themselves give the same CRF
    image = two_regions()[0]
    a = create_postprocessor("densecrf", unary="softmax")(image, {"score_maps": logits})
    b = create_postprocessor("densecrf")(image, {"score_maps": probs})
    torch.testing.assert_close(a["mask_scores"], b["mask_scores"], atol=1e-5, rtol=0)
    # mask_scores (the class-map rule's) are normalised per pixel: scaling them changes nothing
    c = create_postprocessor("densecrf")(image, {"score_maps": logits, "mask_scores": 7 * probs})
    torch.testing.assert_close(c["mask_scores"], b["mask_scores"], atol=1e-5, rtol=0)


def test_bad_image_is_a_one_line_error():
    _, _, logits = two_regions()
    post = create_postprocessor("densecrf")
    with pytest.raises(DataError, match=r"image of size \(10, 10\) but score maps of size \(40, 48\)"):
        post(torch.zeros(3, 10, 10, dtype=torch.uint8), {"score_maps": logits})
    with pytest.raises(DataError, match="the image must be uint8"):
        post(torch.zeros(3, H, W), {"score_maps": logits})


# -- options -------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("iterations", 0, "densecrf: iterations must be an integer >= 1, got 0"),
    ("iterations", 2.5, "densecrf: iterations must be an integer >= 1, got 2.5"),
    ("bilateral_weight", -1, "densecrf: bilateral_weight must be >= 0, got -1"),
    ("gaussian_weight", -0.5, "densecrf: gaussian_weight must be >= 0, got -0.5"),
    ("theta_alpha", 0, "densecrf: theta_alpha must be > 0, got 0"),
    ("theta_beta", -5, "densecrf: theta_beta must be > 0, got -5"),
    ("theta_gamma", "3", "densecrf: theta_gamma must be a number, got '3'"),
    ("unary", "logits", "densecrf: unary must be one of auto, softmax, probs, scores, got 'logits'"),
    ("floor", 0, r"densecrf: floor must be in \(0, 1\), got 0"),
])
def test_out_of_range_options_are_one_line_config_errors(option, value, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        create_postprocessor("densecrf", **{option: value})


def test_missing_library_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    with pytest.raises(ConfigError, match=r"segbench\[crf\].*pip install pydensecrf2\)$"):
        create_postprocessor("densecrf")


def test_set_overrides_reach_the_options():
    from segbench.engine.config import resolve_config
    from segbench.plugins import get_registry

    registry = get_registry()
    chain = {"densecrf": registry.postprocessor("densecrf")}
    config = resolve_config(registry.method("fcn8s"), registry.dataset("shapes"), {}, "quick",
                            {"postprocess.densecrf.theta_alpha": 80, "iterations": 5.0}, chain)
    assert config.postprocess["densecrf"]["theta_alpha"] == 80.0
    assert config.postprocess["densecrf"]["iterations"] == 5
    assert "supervision" not in config.postprocess["densecrf"]  # filled by the engine, not configured


# -- engine ------------------------------------------------------------------------------
TINY = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 4, "image_size": 48}


def test_supervised_run_with_densecrf(tmp_path):
    from segbench.engine.run import run_experiment

    overrides = {**TINY, "fc_channels": 16, "fc_kernel": 3}
    record = run_experiment("fcn8s", "shapes", overrides=overrides, postprocess=["densecrf"], runs=tmp_path,
                            progress=False).record
    assert record["status"] == "finished"
    assert list(record["config"]["postprocess"]) == ["densecrf"]
    assert record["config"]["postprocess"]["densecrf"]["theta_alpha"] == 121.0
    assert 0.0 <= record["metrics"]["miou"] <= 1.0


def test_image_supervised_run_gets_the_class_map_rule_then_densecrf(tmp_path):
    from segbench.engine.run import run_experiment

    record = run_experiment("weldon", "shapes", overrides=TINY, postprocess=["densecrf"], runs=tmp_path,
                            progress=False).record
    assert record["status"] == "finished"
    assert list(record["config"]["postprocess"]) == ["cam_mask", "densecrf"]
    assert 0.0 <= record["metrics"]["miou"] <= 1.0
