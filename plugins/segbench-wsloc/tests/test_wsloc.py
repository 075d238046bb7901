"""The wsloc method: registration, beam search on hand-made maps, box pooling, options, outputs, loss."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import segbench
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 5
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 feature maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("wsloc", C, **{**TINY, **options})


def batch(n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


class FixedFeatures(nn.Module):
    """A stand-in backbone that returns given feature maps, whatever the images."""

    def __init__(self, features: torch.Tensor) -> None:
        super().__init__()
        self.features = features

    def forward(self, images):
        return [self.features[: images.shape[0]]]


def block_features(blocks, h: int = 8, w: int = 10) -> torch.Tensor:
    """Per image a 2-channel map: channel 0 is 1 on the block (y0, y1, x0, x1), channel 1 is 1 everywhere."""
    feats = torch.zeros(len(blocks), 2, h, w)
    feats[:, 1] = 1.0
    for i, (y0, y1, x0, x1) in enumerate(blocks):
        feats[i, 0, y0:y1, x0:x1] = 1.0
    return feats


# -- registration ------------------------------------------------------------------------------
def test_spec_is_registered_from_the_entry_point():
    spec = get_registry().method("wsloc")
    assert spec.supervision == "image"
    assert spec.outputs == {"scores", "score_maps", "instances"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "Bency" in spec.paper and "ECCV 2016" in spec.paper
    for recipe in spec.recipes.values():
        assert set(recipe.model) <= set(spec.options)
    assert spec.recipes["paper"].model["pretrained"] is True
    assert get_registry().plugins["wsloc"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_wsloc; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- box pooling and the beam search on hand-made maps ------------------------------------------
def test_box_means_equal_torchvision_roi_align_on_whole_cell_boxes():
    from torchvision.ops import roi_align

    from segbench_wsloc.boxpool import BoxMeans

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 6, 7, 9, generator=g)
    x0, y0 = torch.randint(0, 8, (200,), generator=g), torch.randint(0, 6, (200,), generator=g)
    x1 = x0 + 1 + (torch.rand(200, generator=g) * (9 - x0)).long().clamp_max(8 - x0)
    y1 = y0 + 1 + (torch.rand(200, generator=g) * (7 - y0)).long().clamp_max(6 - y0)
    boxes, image = torch.stack([x0, y0, x1, y1], 1), torch.randint(0, 3, (200,), generator=g)
    rois = torch.cat([image[:, None].float(), boxes.float()], 1)
    expected = roi_align(feats, rois, 1, 1.0, -1, aligned=True).flatten(1)
    torch.testing.assert_close(BoxMeans(feats)(image, boxes), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(BoxMeans(feats)(torch.tensor([1]), torch.tensor([[2, 3, 4, 4]])),
                               feats[1, :, 3:4, 2:4].mean((1, 2))[None])


def test_successors_stay_on_the_grid_and_respect_min_size():
    from segbench_wsloc.beam import successors

    boxes = torch.tensor([[[0, 0, 4, 3], [1, 1, 2, 2]]])
    cand, ok = successors(boxes, torch.tensor([[True, True]]), h=3, w=4, step=1, min_size=1)
    assert cand.shape == (1, 24, 4)
    valid = {tuple(b) for b in cand[0][ok[0]].tolist()}
    # the whole grid can only shrink; the 1x1 box can only shift or grow
    assert valid == {(1, 0, 4, 3), (0, 1, 4, 3), (0, 0, 3, 3), (0, 0, 4, 2),
                     (0, 1, 1, 2), (2, 1, 3, 2), (1, 0, 2, 1), (1, 2, 2, 3),
                     (0, 1, 2, 2), (1, 0, 2, 2), (1, 1, 3, 2), (1, 1, 2, 3)}
    _, ok2 = successors(boxes, torch.tensor([[True, False]]), h=3, w=4, step=1, min_size=3)
    assert {tuple(b) for b in cand[0][ok2[0]].tolist()} == {(1, 0, 4, 3), (0, 0, 3, 3)}


def test_beam_search_finds_the_box_that_maximises_a_sum_score():
    from segbench_wsloc.beam import beam_search
    from segbench_wsloc.boxpool import BoxMeans

    # (4, 8, 0, 3): shrinking alone gets stuck in a one-row box (a wide box gains by dropping a row that
    # holds 3 of the block's cells); growing a side back finds the block, even with a beam of one
    blocks = [(2, 5, 3, 7), (0, 8, 0, 2), (6, 8, 6, 10), (4, 8, 0, 3)]
    feats = block_features(blocks)
    pool = BoxMeans(feats)
    groups = torch.arange(4)

    def score(boxes):  # sum over the box of (indicator - 0.5): the block itself is the unique optimum
        g, n, _ = boxes.shape
        means = pool(groups.repeat_interleave(n), boxes.reshape(-1, 4))
        area = ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).reshape(-1)
        return ((means[:, 0] - 0.5) * area).view(g, n)

    result = beam_search(score, 4, 8, 10, beam=3)
    assert beam_search(score, 4, 8, 10, beam=1).boxes[:, 0].tolist() == result.boxes[:, 0].tolist()
    for g, (y0, y1, x0, x1) in enumerate(blocks):
        assert result.boxes[g, 0].tolist() == [x0, y0, x1, y1]
        assert result.scores[g, 0] == pytest.approx(0.5 * (y1 - y0) * (x1 - x0))
        # the map's maximum lies inside the best box
        flat = int(result.heat[g].flatten().argmax())
        y, x = divmod(flat, 10)
        assert y0 <= y < y1 and x0 <= x < x1
    assert result.valid.all() and 1 < result.steps <= 18
    assert (result.scores[:, :-1] >= result.scores[:, 1:]).all()


def test_beam_keeps_distinct_states_and_fewer_when_few_exist():
    from segbench_wsloc.beam import beam_search

    result = beam_search(lambda b: torch.zeros(b.shape[:2]), 1, 1, 2, beam=4, min_size=1)
    states = {tuple(b) for b, v in zip(result.boxes[0].tolist(), result.valid[0].tolist()) if v}
    assert states == {(0, 0, 2, 1), (1, 0, 2, 1), (0, 0, 1, 1)}  # every box of a 1x2 grid, once each
    assert result.valid[0].tolist() == [True, True, True, False]


# -- the model's search on fixed features -------------------------------------------------------
def set_sum_head(model):
    """Head weights for which a masked box scores (sum of the block channel - 0.5 x area) / (h w) + 1 for
    class 2 (the best-scoring class of the image)."""
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.zero_()
        model.fc.weight[2] = torch.tensor([1.0, -0.5])
        model.fc.bias[2] = 1.0
        model.fc.weight[3] = torch.tensor([-1.0, 0.2])


def test_predict_localises_known_blocks_in_input_pixels():
    blocks = [(2, 5, 3, 7), (4, 8, 0, 3)]
    model = build(region="mask", beam=3, top_classes=2, max_boxes=2, background=0).eval()
    model.backbone = FixedFeatures(block_features(blocks))
    model.fc = nn.Linear(2, C)
    set_sum_head(model)
    predictions = model.predict(torch.zeros(2, 3, 32, 40))  # 8x10 cells of 4x4 px
    for (y0, y1, x0, x1), p in zip(blocks, predictions):
        inst = p["instances"]
        assert set(inst["classes"].tolist()) <= {1, 2, 3, 4}
        best = inst["boxes"][inst["classes"] == 2][0]
        torch.testing.assert_close(best, torch.tensor([4.0 * x0, 4.0 * y0, 4.0 * x1, 4.0 * y1]))
        flat = int(p["score_maps"][2].flatten().argmax())
        y, x = divmod(flat, 10)
        assert y0 <= y < y1 and x0 <= x < x1
        assert p["score_maps"][2].max() == pytest.approx(1 + 0.5 * (y1 - y0) * (x1 - x0) / 80, abs=2e-3)


def test_classes_not_searched_get_their_shifted_class_activation_map():
    model = build(top_classes=1).eval()
    images, _ = batch(2)
    scores, feats = model(images)
    cam = torch.einsum("bdhw,cd->bchw", feats, model.fc.weight) + model.fc.bias[:, None, None]
    for b, p in enumerate(model.predict(images)):
        searched = int(scores[b, 1:].argmax()) + 1
        assert set(p["instances"]["classes"].tolist()) == {searched}
        for c in range(C):
            if c != searched:
                torch.testing.assert_close(p["score_maps"][c], cam[b, c] - cam[b, c].max() + scores[b, c],
                                           atol=1e-5, rtol=1e-5)
        assert p["score_maps"][searched].max() >= scores[b, searched] - 1e-5  # the whole image is a state


# -- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [({"beam": 0}, "beam must be an integer in [1, 64], got 0"),
     ({"beam_steps": -1}, "beam_steps must be an integer in [0, 1000], got -1"),
     ({"step": 0}, "step must be an integer in [1, 64], got 0"),
     ({"min_size": 0}, "min_size must be an integer in [1, 256], got 0"),
     ({"top_classes": 6}, "top_classes must be an integer in [0, 5], got 6"),
     ({"max_boxes": 0}, "max_boxes must be an integer in [1, 64], got 0"),
     ({"nms_iou": 1.5}, "nms_iou must be a number in (0.0, 1.0], got 1.5"),
     ({"head": "conv"}, "head must be one of linear, mlp, got 'conv'"),
     ({"region": "box"}, "region must be one of crop, mask, got 'box'"),
     ({"hidden": 0}, "hidden must be an integer in [1, 16384], got 0"),
     ({"dropout": 1.0}, "dropout must be a number in [0.0, 0.99], got 1.0"),
     ({"background": -1}, "background must be an integer in [0, 4], got -1"),
     ({"nope": 1}, "nope"),
     ({"backbone": "no_such_net"}, "no_such_net"),
     ({"backbone_args": 3}, "backbone_args must be a dict")],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


# -- outputs and loss --------------------------------------------------------------------------
@pytest.mark.parametrize("options", [{}, {"head": "mlp", "hidden": 16, "region": "mask", "top_classes": 2}])
def test_predict_outputs_keys_shapes_and_instances(options):
    model = build(**options).eval()
    images, _ = batch(3)
    predictions = model.predict(images)
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"scores", "score_maps", "instances"}
        assert p["scores"].shape == (C,) and p["score_maps"].shape == (C, 8, 8)
        assert torch.isfinite(p["score_maps"]).all()
        inst = p["instances"]
        n = inst["scores"].shape[0]
        assert set(inst) == {"boxes", "classes", "scores"} and n >= 1
        assert inst["boxes"].shape == (n, 4) and inst["classes"].dtype == torch.int64
        assert (inst["classes"] != 0).all()
        assert all(int((inst["classes"] == c).sum()) <= 3 for c in range(C))
        boxes = inst["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 32
        assert (inst["scores"][:-1] >= inst["scores"][1:]).all()


def test_loss_is_bce_on_the_pooled_scores_and_respects_labels_ignore():
    model = build().eval()
    images, targets = batch(3)
    labels = torch.stack([t["labels"] for t in targets])
    scores, feats = model(images)
    torch.testing.assert_close(scores, model.fc(feats.mean((2, 3))))
    torch.testing.assert_close(model.loss(images, targets)["loss"], F.binary_cross_entropy_with_logits(scores, labels))
    ignore = torch.zeros(C, dtype=torch.bool)
    ignore[2] = True
    per = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    keep = torch.ones_like(per, dtype=torch.bool)
    keep[0, 2] = False
    ignored = [{**targets[0], "labels_ignore": ignore}] + targets[1:]
    torch.testing.assert_close(model.loss(images, ignored)["loss"], per[keep].mean())


def test_loss_backward_and_decrease():
    model = build(head="mlp", hidden=16).train()
    images, targets = batch(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for step in range(12):
        loss = model.loss(images, targets)["loss"]
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.6 * values[0]


def test_labels_of_the_wrong_size_are_a_data_error():
    model = build()
    images, _ = batch(2)
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)
