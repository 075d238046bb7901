"""The class-map rule (cam_mask) and post-processor plumbing: registry, config, engine, record."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from segbench.api import create_postprocessor, list_postprocessors
from segbench.engine.config import resolve_config
from segbench.errors import ConfigError
from segbench.plugins import get_registry
from segbench.postprocess.cam import cam_mask_scores, cam_to_mask


def maps_2x2() -> torch.Tensor:
    # classes: 0 background, 1, 2, 3 on a 2x2 image
    return torch.tensor([
        [[0.0, 0.0], [0.0, 0.0]],
        [[4.0, 3.0], [0.0, -2.0]],   # normalised: 1, 5/6, 1/3, 0
        [[0.0, 1.0], [3.0, 0.0]],    # normalised: 0, 1/3, 1, 0
        [[9.0, 9.0], [9.0, 0.0]],    # absent class (low score): never chosen
    ])


def test_cam_rule_on_a_hand_computed_case():
    scores = torch.tensor([5.0, 2.0, 0.5, -1.0])
    out = cam_mask_scores(maps_2x2(), scores, background=0, bg_threshold=0.5)
    assert torch.allclose(out[1], torch.tensor([[1.0, 5 / 6], [1 / 3, 0.0]]))
    assert torch.allclose(out[2], torch.tensor([[0.0, 1 / 3], [1.0, 0.0]]))
    assert torch.equal(out[3], torch.zeros(2, 2))
    assert torch.equal(out[0], torch.full((2, 2), 0.5))
    assert cam_to_mask(maps_2x2(), scores, background=0, bg_threshold=0.5).tolist() == [[1, 1], [2, 0]]
    # a higher threshold turns the weaker pixel to background
    assert cam_to_mask(maps_2x2(), scores, background=0, bg_threshold=0.9).tolist() == [[1, 0], [2, 0]]


def test_cam_rule_keeps_the_top_class_when_none_passes_and_all_on_request():
    scores = torch.tensor([9.0, -3.0, -1.0, -2.0])  # background score is ignored
    out = cam_mask_scores(maps_2x2(), scores, background=0, bg_threshold=0.5)
    assert out[2].max() == 1 and out[1].max() == 0 and out[3].max() == 0
    every = cam_mask_scores(maps_2x2(), scores, background=0, bg_threshold=0.5, classes="all")
    assert every[1].max() == 1 and every[3].max() == 1


def test_cam_rule_without_a_background_class_and_flat_maps():
    maps = torch.zeros(3, 2, 2)
    maps[1, 0, 0] = 1.0
    mask = cam_to_mask(maps, torch.tensor([1.0, 1.0, 1.0]), background=None)
    assert mask.tolist() == [[1, 0], [0, 0]]  # flat maps normalise to 0, ties go to the lower index


def test_cam_mask_is_registered_and_rejects_bad_options():
    assert "cam_mask" in list_postprocessors()
    post = create_postprocessor("cam_mask", num_classes=4, background=0)
    prediction = {"scores": torch.tensor([5.0, 2.0, 0.5, -1.0]), "score_maps": maps_2x2()}
    out = post(torch.zeros(3, 2, 2, dtype=torch.uint8), prediction)
    assert out["mask"].tolist() == [[1, 1], [2, 0]] and "mask" not in prediction
    with pytest.raises(ConfigError, match="bg_threshold must be in \\[0, 1\\]"):
        create_postprocessor("cam_mask", bg_threshold=1.5)
    with pytest.raises(ConfigError, match="classes must be one of predicted, all"):
        create_postprocessor("cam_mask", classes="some")


def test_postprocess_options_resolve_from_set():
    registry = get_registry()
    chain = {"cam_mask": registry.postprocessor("cam_mask")}
    config = resolve_config(registry.method("weldon"), registry.dataset("shapes"), {}, "quick",
                            {"bg_threshold": 0.3, "postprocess.cam_mask.classes": "all"}, chain)
    assert config.postprocess == {"cam_mask": {"bg_threshold": 0.3, "score_threshold": 0.0, "classes": "all"}}
    assert config.to_dict()["postprocess"]["cam_mask"]["bg_threshold"] == 0.3
    with pytest.raises(ConfigError, match="unknown --set key 'postprocess.cam_mask.nope'"):
        resolve_config(registry.method("weldon"), registry.dataset("shapes"), {}, "quick",
                       {"postprocess.cam_mask.nope": 1}, chain)


def test_image_supervised_run_gets_miou_through_the_class_map_rule(tmp_path):
    from segbench.engine.run import run_experiment

    overrides = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 6, "image_size": 48, "bg_threshold": 0.4}
    outcome = run_experiment("weldon", "shapes", overrides=overrides, runs=tmp_path, progress=False)
    record = outcome.record
    assert 0.0 <= record["metrics"]["miou"] <= 1.0
    assert record["config"]["postprocess"]["cam_mask"]["bg_threshold"] == 0.4
    saved = json.loads(outcome.path.read_text())
    assert saved["config"]["postprocess"] == record["config"]["postprocess"]


def test_unknown_or_inapplicable_postprocessor_is_refused(tmp_path):
    from segbench.engine.run import run_experiment
    from segbench.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match="unknown postprocessor 'cam_msk'; did you mean 'cam_mask'"):
        run_experiment("weldon", "shapes", postprocess=["cam_msk"], runs=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.json"))


def test_bad_postprocessor_option_fails_before_training_and_writes_no_record(tmp_path):
    from segbench.engine.run import run_experiment

    overrides = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 6, "image_size": 48, "bg_threshold": 1.5}
    with pytest.raises(ConfigError, match="bg_threshold must be in \\[0, 1\\]"):
        run_experiment("weldon", "shapes", overrides=overrides, runs=tmp_path, progress=False)
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.safetensors"))


def test_leaderboard_names_requested_postprocessors_but_not_the_class_map_rule():
    from segbench.results.leaderboard import method_label
    from segbench.results.published import display_method

    assert method_label({"method": "weldon", "config": {"postprocess": {"cam_mask": {}}}}) == "weldon"
    assert method_label({"method": "deeplab_v1", "config": {"postprocess": {"densecrf": {}}}}) == "deeplab_v1+densecrf"
    assert method_label({"method": "fcn8s", "config": {}}) == "fcn8s"
    assert display_method("deeplab_v1+densecrf") == "DeepLab v1 + CRF"


def test_a_recipe_applies_its_post_processors_and_none_drops_them(tmp_path):
    from segbench import Recipe
    from segbench.engine.run import requested_postprocessors

    registry = get_registry()
    method = registry.method("weldon")
    with_rule = dataclasses.replace(method, recipes={"quick": Recipe("quick", postprocess=("cam_mask",)),
                                                     "gone": Recipe("gone", postprocess="nope")})
    assert with_rule.recipes["gone"].postprocess == ("nope",)
    assert requested_postprocessors(with_rule, "quick", None, registry) == ["cam_mask"]
    assert requested_postprocessors(with_rule, "quick", ["cam_mask"], registry) == ["cam_mask"]
    assert requested_postprocessors(with_rule, "quick", ["none"], registry) == []
    with pytest.raises(ConfigError, match="recipe 'weldon:gone' applies post-processor 'nope', which is not "
                                          "installed .* --postprocess none to run without it"):
        requested_postprocessors(with_rule, "gone", None, registry)
    assert requested_postprocessors(with_rule, "gone", ["none"], registry) == []
