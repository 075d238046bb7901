"""Test-time augmentation in the engine (``tta``, ``slide``): the numbers against hand computations, the config
fields, their ids, records and leaderboard labels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segbench.engine.tta import TestTime, check_method, slide_predict
from segbench.errors import ConfigError
from segbench.testing.cli import run_cli

C = 4


class Tiny(torch.nn.Module):
    """Score maps at half the input size from a 3x3 convolution (position dependent at the borders), image
    scores (the maps' max) and a label map (argmax at the maps' size), as a method's ``predict``."""

    def __init__(self, kernel: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, C, kernel, padding=kernel // 2)
        self.calls: list[tuple[int, int]] = []

    def maps(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(F.avg_pool2d(images, 2, ceil_mode=True))

    def predict(self, images: torch.Tensor) -> list[dict]:
        self.calls.append(tuple(images.shape[-2:]))
        maps = self.maps(images)
        return [{"score_maps": m, "scores": m.flatten(1).amax(1), "mask": m.argmax(0)} for m in maps]


def up(maps: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def stacked(predictions: list[dict], key: str) -> torch.Tensor:
    return torch.stack([p[key] for p in predictions])


@torch.no_grad()
def test_flip_is_the_mean_of_the_plain_and_the_flipped_back_pass():
    model, images = Tiny(), torch.randn(2, 3, 22, 30)
    got = TestTime.parse("flip").predict(model.predict, images)
    plain, flipped = model.maps(images), model.maps(images.flip(-1)).flip(-1)
    expected = (up(plain, (22, 30)) + up(flipped, (22, 30))) / 2
    torch.testing.assert_close(stacked(got, "score_maps"), expected, atol=1e-6, rtol=0)
    scores = (plain.flatten(2).amax(2) + model.maps(images.flip(-1)).flatten(2).amax(2)) / 2
    torch.testing.assert_close(stacked(got, "scores"), scores, atol=1e-6, rtol=0)
    assert torch.equal(stacked(got, "mask"), expected.argmax(1))  # the mask: argmax of the averaged maps
    assert not torch.allclose(expected, up(plain, (22, 30)), atol=1e-3)  # the flip does something


@torch.no_grad()
def test_multi_scale_is_the_average_over_scales_at_the_input_size():
    model, images = Tiny(), torch.randn(1, 3, 20, 28)
    got = TestTime.parse("ms:0.5,1.0,1.5+flip").predict(model.predict, images)
    views = []
    for scale in (0.5, 1.0, 1.5):
        x = images if scale == 1.0 else up(images, (round(20 * scale), round(28 * scale)))
        views += [up(model.maps(x), (20, 28)), up(model.maps(x.flip(-1)).flip(-1), (20, 28))]
    torch.testing.assert_close(stacked(got, "score_maps"), sum(views) / 6, atol=1e-6, rtol=0)
    assert model.calls[:2] == [(10, 14), (10, 14)] and (30, 42) in model.calls


@torch.no_grad()
def test_one_window_covering_the_image_is_the_plain_pass():
    model, images = Tiny(), torch.randn(2, 3, 24, 24)
    got = TestTime.parse("", "24,16").predict(model.predict, images)
    assert model.calls == [(24, 24)]
    torch.testing.assert_close(stacked(got, "score_maps"), up(model.maps(images), (24, 24)), atol=1e-6, rtol=0)
    pointwise, small = Tiny(kernel=1), torch.randn(1, 3, 10, 14)  # smaller than the window: padded, cropped back
    padded = slide_predict(pointwise.predict, small, 16, 8)
    expected = up(pointwise.maps(F.pad(small, (0, 2, 0, 6))), (16, 16))[..., :10, :14]
    torch.testing.assert_close(stacked(padded, "score_maps"), expected, atol=1e-6, rtol=0)


@torch.no_grad()
def test_overlapping_windows_are_accumulated_and_divided_by_their_count():
    model, images = Tiny(), torch.randn(1, 3, 40, 30)
    got = slide_predict(model.predict, images, 24, 16)
    total, count = torch.zeros(1, C, 40, 30), torch.zeros(40, 30)
    window_scores = []
    for top in (0, 16):  # 40 px: windows at 0 and 16 (the second moved back to end at 40)
        for left in (0, 6):  # 30 px: at 0 and 6 (16 + 24 > 30)
            maps = model.maps(images[..., top:top + 24, left:left + 24])
            total[..., top:top + 24, left:left + 24] += up(maps, (24, 24))
            count[top:top + 24, left:left + 24] += 1
            window_scores.append(maps.flatten(2).amax(2))
    assert count.min() == 1 and count.max() == 4
    torch.testing.assert_close(stacked(got, "score_maps"), total / count, atol=1e-6, rtol=0)
    torch.testing.assert_close(stacked(got, "scores"), sum(window_scores) / 4, atol=1e-6, rtol=0)
    assert torch.equal(stacked(got, "mask"), (total / count).argmax(1))


def test_neutral_values_call_predict_once_on_the_batch_as_it_is():
    images = torch.randn(1, 3, 8, 8)
    sentinel = [{"score_maps": torch.zeros(C, 4, 4)}]
    seen = []
    out = TestTime.parse("", "").predict(lambda x: seen.append(x) or sentinel, images)
    assert out is sentinel and len(seen) == 1 and seen[0] is images


@pytest.mark.parametrize("field, value, message", [
    ("tta", "flop", "tta must be '', 'flip', 'ms:S1,S2,...' or 'ms:S1,S2,...+flip', got 'flop'"),
    ("tta", "ms:0.5,-1", "tta 'ms:0.5,-1': scale '-1' is not a positive number"),
    ("tta", "ms:1,1", "a scale appears twice"),
    ("slide", "512", "slide must be 'SIZE,STRIDE'"),
    ("slide", "256,512", "stride 512 > window size 256"),
    ("slide", "0,0", "window size and stride must be at least 1"),
])
def test_bad_values_are_one_line_config_errors(field, value, message):
    from segbench.engine.config import TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig(**{field: value}).validate()
    assert message in str(info.value) and "\n" not in str(info.value)


def test_slide_given_as_a_pair_is_stored_as_text():
    from segbench.engine.config import TrainConfig

    config = TrainConfig(slide=(64, 48))
    config.validate()
    assert config.slide == "64,48"


def test_instance_methods_are_refused_with_their_outputs():
    from segbench.plugins import get_registry

    registry = get_registry()
    with pytest.raises(ConfigError, match=r"method 'mask_rcnn' predicts instances \(instances, mask, score_maps"):
        check_method(registry.method("mask_rcnn"), "flip")
    check_method(registry.method("mask_rcnn"), "", "")  # neutral: nothing to refuse
    check_method(registry.method("deeplab_v3"), "ms:0.5,1.0+flip", "64,32")


def test_neutral_values_keep_config_ids():
    from segbench.engine.config import identity_dict, resolve_config
    from segbench.plugins import get_registry
    from segbench.results.record import make_config_id

    registry = get_registry()
    method, dataset = registry.method("deeplab_v3"), registry.dataset("shapes")
    config = resolve_config(method, dataset, {}, "quick").to_dict()
    assert config["train"]["tta"] == "" and config["train"]["slide"] == ""
    before = {**config, "train": {k: v for k, v in config["train"].items() if k not in ("tta", "slide")}}
    ids = [make_config_id(identity_dict(c), "fp", {}) for c in (config, before)]
    assert ids[0] == ids[1]
    flipped = resolve_config(method, dataset, {}, "quick", {"tta": "flip"}).to_dict()
    assert make_config_id(identity_dict(flipped), "fp", {}) != ids[0]


def test_a_flip_run_gets_its_own_id_its_record_and_label(capsys, tmp_path):
    tiny = ["--set", "steps=2", "--set", "image_size=32", "--set", "num_train=4", "--set", "num_val=4",
            "--set", "batch_size=4", "-q", "--runs-dir", str(tmp_path)]
    import json

    code, _, err = run_cli(capsys, "run", "--method", "fcn32s", *tiny)
    assert code == 0, err
    code, _, err = run_cli(capsys, "run", "--method", "fcn32s", *tiny, "--set", "tta=flip")
    assert code == 0, err
    records = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert len(records) == 2 and len({r["config_id"] for r in records}) == 2
    by_tta = {r["config"]["train"]["tta"]: r for r in records}
    assert set(by_tta) == {"", "flip"} and by_tta["flip"]["status"] == "finished"
    code, out, err = run_cli(capsys, "leaderboard", "--runs-dir", str(tmp_path), "--metric", "miou")
    assert code == 0, err
    rows = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| FCN")]
    assert rows == ["FCN-32s", "FCN-32s [flip]"], out
    plain = by_tta[""]["run_id"]
    code, out, err = run_cli(capsys, "eval", plain, "--runs-dir", str(tmp_path), "--tta", "flip", "-q")
    assert code == 0, err
    assert "test-time: flip" in out
    shown = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:] if line.strip().startswith("miou ")}
    assert float(shown["miou"]) == pytest.approx(100 * by_tta["flip"]["metrics"]["miou"], abs=0.006)
    code, _, err = run_cli(capsys, "eval", plain, "--runs-dir", str(tmp_path), "--tta", "flap", "-q")
    assert code != 0 and err.count("\n") == 1 and "tta must be" in err


@pytest.mark.parametrize("shape", [(7, 13, 17), (2, 21, 9, 11), (1, 5, 3)])
def test_class_argmax_equals_torch_argmax_ties_included(shape):
    from segbench.engine.tta import class_argmax

    maps = torch.randint(0, 3, shape).float()  # many ties: the first class wins, as argmax
    assert torch.equal(class_argmax(maps), maps.argmax(dim=-3))
    maps.view(-1)[5] = float("nan")
    assert torch.equal(class_argmax(maps), maps.argmax(dim=-3))
