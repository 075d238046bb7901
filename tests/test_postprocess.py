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
from segbench.postprocess.cam import CamMask, cam_mask_scores, cam_to_mask


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


def reference_cam_scores(score_maps, scores, *, background=0, bg_threshold=0.5, score_threshold=0.0,
                         classes="predicted"):
    """The rule as it was written before the kept-classes-only version: every class, dense, at full size."""
    maps = score_maps.float()
    c = maps.shape[0]
    foreground = torch.ones(c, dtype=torch.bool)
    if background is not None:
        foreground[background] = False
    if classes == "all" or scores is None:
        keep = foreground.clone()
    else:
        scores = scores.float().flatten()
        keep = foreground & (scores >= score_threshold)
        if not keep.any() and foreground.any():
            keep[int(scores.masked_fill(~foreground, float("-inf")).argmax())] = True
    flat = maps.flatten(1)
    low = flat.min(1).values[:, None, None]
    span = flat.max(1).values[:, None, None] - low
    normalised = torch.where(span > 0, (maps - low) / span.clamp_min(1e-12), torch.zeros_like(maps))
    out = torch.where(keep[:, None, None], normalised, torch.zeros_like(maps))
    if background is not None:
        out[background] = float(bg_threshold)
    return out


def assert_same_as_reference(maps, scores, **options):
    expected = reference_cam_scores(maps, scores, **options)
    assert torch.equal(cam_mask_scores(maps, scores, **options), expected), options
    assert torch.equal(cam_to_mask(maps, scores, **options), expected.argmax(0)), options
    post = CamMask(**options)
    out = post(None, {"score_maps": maps, "scores": scores}, mask_scores=False)
    assert torch.equal(out["mask"], expected.argmax(0)) and "mask_scores" not in out


CAM_OPTIONS = [dict(background=bg, bg_threshold=bt, score_threshold=st, classes=cl)
               for bg in (0, None, 2, -1) for bt in (0.0, 0.5, 1.0) for st in (0.0, 0.8, 99.0)
               for cl in ("predicted", "all")]


@pytest.mark.parametrize("kind", ["normal", "ties", "flat", "float64", "zeros", "one_class_on"])
def test_cam_rule_equals_the_dense_reference_on_random_maps(kind):
    g = torch.Generator().manual_seed(len(kind))
    for c, h, w in [(1, 3, 4), (2, 1, 1), (4, 5, 3), (9, 6, 7)]:
        maps = torch.randn(c, h, w, generator=g) * 2
        if kind == "ties":  # few distinct values: ties within a class and between classes, many 0s and 1s
            maps = torch.randint(0, 3, (c, h, w), generator=g).float()
        elif kind == "flat":
            maps[::2] = 0.7
        elif kind == "float64":
            maps = maps.double()
        elif kind == "zeros":
            maps = torch.zeros(c, h, w)
        elif kind == "one_class_on":  # one peak: normalised maps are 0 nearly everywhere
            maps = torch.zeros(c, h, w)
            maps[-1, 0, 0] = 1.0
        scores = torch.randn(c, generator=g)
        for options in CAM_OPTIONS:
            if options["background"] == 2 and c < 3:
                continue
            assert_same_as_reference(maps, scores, **options)
            assert_same_as_reference(maps, None, **options)


def test_cam_rule_edge_cases_against_the_reference():
    maps = torch.zeros(5, 2, 3)
    maps[3] = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    maps[4] = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]])  # ties with class 3 at the middle column
    for scores in (torch.tensor([0.0, -5.0, -5.0, 1.0, 1.0]),  # classes 3 and 4 kept
                   torch.full((5,), -9.0),  # none passes: the top foreground class (the first of equal scores)
                   torch.tensor([9.0, -1.0, -1.0, -1.0, -2.0])):  # the background's score never counts
        for options in CAM_OPTIONS:
            if options["background"] != 2:
                assert_same_as_reference(maps, scores, **options)
    # bg_threshold 0 and a kept map at its minimum: value 0 everywhere there, the lowest class index wins
    out = cam_to_mask(maps, torch.tensor([0.0, -5.0, -5.0, 1.0, -5.0]), background=None, bg_threshold=0.0)
    assert out.tolist() == [[0, 3, 3], [3, 3, 0]]


@pytest.mark.parametrize("seed", [0, 1])
def test_cam_mask_at_the_network_size_resizes_the_kept_classes_only(seed, monkeypatch):
    import torch.nn.functional as F

    from segbench.engine import evaluate as engine

    g = torch.Generator().manual_seed(seed)
    maps, scores = torch.randn(21, 5, 7, generator=g), torch.randn(21, generator=g) - 1.0
    size = (67, 90)
    full = F.interpolate(maps[None], size=size, mode="bilinear", align_corners=False)[0]
    resized = []
    resize = engine.resize_score_maps
    monkeypatch.setattr(engine, "resize_score_maps", lambda m, s, ch=None: resized.append(ch) or resize(m, s, ch))
    for options in ({}, {"bg_threshold": 0.2}, {"classes": "all"}):
        post = CamMask(**options, num_classes=21)
        lazy = post(None, {"score_maps": maps, "scores": scores}, size=size)
        eager = post(None, {"score_maps": full, "scores": scores})
        assert torch.equal(lazy["mask"], eager["mask"]) and torch.equal(lazy["mask_scores"], eager["mask_scores"])
        assert torch.equal(eager["mask_scores"], reference_cam_scores(full, scores, **options))
    assert len(resized) == 3 and resized[0].numel() == int((scores[1:] >= 0).sum() or 1)


@pytest.mark.parametrize("threads", [1, 2])
def test_resizing_some_channels_gives_the_values_of_resizing_all(threads):
    import torch.nn.functional as F

    from segbench.engine.evaluate import resize_score_maps

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(threads)
        for c, h, w, size in [(81, 4, 5, (120, 160)), (21, 7, 7, (61, 83)), (5, 3, 2, (70, 70)), (3, 4, 4, (80, 90)),
                              (8, 1, 1, (65, 70)), (8, 2, 3, (13, 17)), (12, 1, 6, (70, 90)), (6, 5, 1, (90, 70)),
                              (9, 6, 6, (6, 6)), (9, 12, 10, (70, 64))]:
            maps = torch.randn(c, h, w, generator=g)
            for layout in ("contiguous", "channels_last"):
                source = maps if layout == "contiguous" else maps[None].to(memory_format=torch.channels_last)[0]
                full = F.interpolate(source.float()[None], size=size, mode="bilinear", align_corners=False)[0]
                assert torch.equal(resize_score_maps(source, size), full)
                for channels in ([0], [c - 1], [0, c - 1], list(range(0, c, 2)), list(range(min(c, 3))), range(c)):
                    picked = torch.tensor(list(channels))
                    assert torch.equal(resize_score_maps(source, size, picked), full[picked]), (c, h, w, size, layout)
    finally:
        torch.set_num_threads(before)


def test_engine_resizes_every_score_map_only_when_something_needs_them():
    import segbench
    from segbench.engine.evaluate import finish_prediction, needs_full_score_maps

    post = CamMask(num_classes=6, background=0)
    miou, loc = segbench.create_metric("miou", num_classes=6), segbench.create_metric("loc_map", num_classes=6)
    assert not needs_full_score_maps([miou], [post])
    assert needs_full_score_maps([miou, loc], [post])
    assert needs_full_score_maps([miou], [post, lambda image, prediction: prediction])  # not lazy: full maps
    assert needs_full_score_maps([object()], [post])  # a metric the registry does not know
    g = torch.Generator().manual_seed(0)
    output = {"score_maps": torch.randn(6, 4, 5, generator=g), "scores": torch.tensor([0.0, 2.0, -1, 1, -1, -1])}
    lazy = finish_prediction(output, None, (140, 150), (128, 160), [post], full_maps=False)
    full = finish_prediction(output, None, (140, 150), (128, 160), [post], full_maps=True)
    assert lazy["score_maps"].shape == (6, 4, 5) and full["score_maps"].shape == (6, 140, 150)
    assert torch.equal(lazy["mask"], full["mask"]) and "mask_scores" not in lazy and "mask_scores" not in full
    chain = finish_prediction(output, None, (140, 150), (128, 160), [post, lambda image, p: p], full_maps=True)
    assert torch.equal(chain["mask_scores"], reference_cam_scores(full["score_maps"], output["scores"]))


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
