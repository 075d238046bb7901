"""The pronet method: registration, box proposals on hand-made maps, options, outputs and losses."""

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
C = 5
TINY = {"backbone": "test_resnet", "out_index": 1, "cascade_backbone": "test_resnet", "cascade_out_index": 1,
        "crop_size": 16}  # stride 4: 32 px images -> 8x8 class maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("pronet", C, **{**TINY, **options})


def batch(n: int = 4, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


# -- registration ------------------------------------------------------------------------------
def test_spec_is_registered_from_the_entry_point():
    spec = get_registry().method("pronet")
    assert spec.supervision == "image"
    assert spec.outputs == {"scores", "score_maps", "instances"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "ProNet" in spec.paper and "CVPR 2016" in spec.paper
    for recipe in spec.recipes.values():
        assert set(recipe.model) <= set(spec.options)
    assert spec.recipes["paper"].model["pretrained"] is True
    assert get_registry().plugins["pronet"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_pronet; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- proposals on hand-made maps -----------------------------------------------------------------
def test_window_scores_are_window_means_with_pixel_boxes():
    from segbench_pronet.proposals import window_scores, window_sizes

    maps = torch.arange(2 * 3 * 4 * 6, dtype=torch.float32).view(2, 3, 4, 6)
    assert window_sizes(4, 6, (0.5, 0.5, 1.0)) == [(2, 3), (4, 6)]
    scores, boxes = window_scores(maps, (40, 60), (0.5, 1.0))  # 10 px per cell
    assert scores.shape == (2, 3, 3 * 4 + 1) and boxes.shape == (13, 4)
    torch.testing.assert_close(boxes[0], torch.tensor([0.0, 0.0, 30.0, 20.0]))
    torch.testing.assert_close(boxes[5], torch.tensor([10.0, 10.0, 40.0, 30.0]))  # row 1, column 1
    torch.testing.assert_close(boxes[-1], torch.tensor([0.0, 0.0, 60.0, 40.0]))
    torch.testing.assert_close(scores[1, 2, 5], maps[1, 2, 1:3, 1:4].mean())
    torch.testing.assert_close(scores[0, 1, -1], maps[0, 1].mean())


def test_proposals_find_the_peaks_best_first_and_nms_removes_shifted_copies():
    from segbench_pronet.proposals import propose

    maps = torch.zeros(1, 2, 8, 8)
    maps[0, 1, 1:3, 1:3] = 5.0  # strong 2x2 object, cells x 1..2, y 1..2
    maps[0, 1, 5:7, 4:6] = 2.0  # weaker one, cells x 4..5, y 5..6
    props = propose(maps, (32, 32), (0.25,), top_k=2, iou=0.3)  # 2x2 windows, 4 px per cell
    one = props.classes == 1
    assert one.sum() == 2
    torch.testing.assert_close(props.boxes[one], torch.tensor([[4.0, 4.0, 12.0, 12.0], [16.0, 20.0, 24.0, 28.0]]))
    torch.testing.assert_close(props.scores[one], torch.tensor([5.0, 2.0]))
    assert (props.image == 0).all()
    # without NMS the second box is a shifted copy of the first peak (mean 2.5 > 2.0)
    loose = propose(maps, (32, 32), (0.25,), top_k=2, iou=1.0)
    second = loose.boxes[loose.classes == 1][1]
    assert second[0] < 16 and second[1] < 16 and float(loose.scores[loose.classes == 1][1]) == 2.5


def test_proposals_only_for_active_classes_and_at_several_sizes():
    from segbench_pronet.proposals import propose

    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    maps = torch.zeros(2, 3, 8, 8)
    maps[:, 2] = torch.exp(-((ys - 3.5) ** 2 + (xs - 3.5) ** 2) / 4)  # a blob centred between cells 3 and 4
    active = torch.tensor([[False, False, True], [False, True, False]])
    props = propose(maps, (64, 64), (0.25, 0.5), top_k=20, iou=0.3, active=active)  # 8 px per cell
    assert set(zip(props.image.tolist(), props.classes.tolist())) == {(0, 2), (1, 1)}
    mine = props.boxes[props.image == 0]
    torch.testing.assert_close(mine[0], torch.tensor([24.0, 24.0, 40.0, 40.0]))  # the best 2x2 window
    assert any(torch.equal(box, torch.tensor([16.0, 16.0, 48.0, 48.0])) for box in mine)  # the best 4x4 one
    empty = propose(maps, (64, 64), (0.5,), top_k=3, active=torch.zeros(2, 3, dtype=torch.bool))
    assert empty.boxes.shape == (0, 4)


def test_training_boxes_take_positives_first_then_hard_negatives():
    model = build(train_boxes=2)
    maps = torch.zeros(1, C, 8, 8)
    maps[0, 3, 0:2, 6:8] = 4.0
    scores = torch.tensor([[9.0, 0.0, 5.0, -1.0, 1.0]])  # background 0 scores highest but is never chosen
    labels = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0]])
    image, classes, boxes = model.training_boxes(scores, maps, labels, (32, 32))
    assert classes.tolist() == [3, 2] and image.tolist() == [0, 0]
    assert boxes[0, 0] >= 16 and boxes[0, 3] <= 16  # the positive class's best window is its top-right blob


def test_crops_are_roi_align_crops_of_the_boxes():
    model = build(crop_size=8)
    images = torch.zeros(1, 3, 32, 32)
    images[0, :, 8:16, 16:32] = 2.0
    images = torch.cat([images, -images])
    boxes = torch.tensor([[18.0, 9.0, 30.0, 15.0], [18.0, 9.0, 30.0, 15.0], [0.0, 20.0, 12.0, 30.0]])
    crops = model.crops(images, torch.tensor([0, 1, 0]), boxes)  # inside the block of 2 / -2, then outside
    assert crops.shape == (3, 3, 8, 8)
    torch.testing.assert_close(crops[0], torch.full((3, 8, 8), 2.0))
    torch.testing.assert_close(crops[1], torch.full((3, 8, 8), -2.0))
    torch.testing.assert_close(crops[2], torch.zeros(3, 8, 8))


# -- options -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [({"top_k": 0}, "top_k must be an integer in [1, 100], got 0"),
     ({"top_classes": 9}, "top_classes must be an integer in [0, 5], got 9"),
     ({"scales": (1.0, 0.0)}, "scales must be a number or a list of numbers in (0.0, 4.0]"),
     ({"box_sizes": 1.5}, "box_sizes must be a number or a list of numbers in (0.0, 1.0], got 1.5"),
     ({"nms_iou": 0}, "nms_iou must be a number in (0.0, 1.0], got 0"),
     ({"pool": "sum"}, "pool must be one of lse, max, avg, got 'sum'"),
     ({"lse_r": -1.0}, "lse_r must be a number in (0.0, 100.0]"),
     ({"crop_size": 4}, "crop_size must be an integer in [8, 512], got 4"),
     ({"crop_labels": "box"}, "crop_labels must be one of image, class"),
     ({"fuse": "max"}, "fuse must be one of mean, cascade"),
     ({"background": 5}, "background must be an integer in [0, 4], got 5"),
     ({"train_boxes": True}, "train_boxes must be an integer in [1, 64], got True"),
     ({"nope": 1}, "nope"),
     ({"backbone": "no_such_net"}, "no_such_net"),
     ({"cascade_args": 3}, "cascade_args must be a dict")],
)
def test_bad_options_are_one_line_config_errors(options, message):
    with pytest.raises(ConfigError) as info:
        build(**options)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_options_take_single_numbers_and_lists():
    model = build(scales=1.0, box_sizes=[0.3, 0.6])
    assert model.scales == (1.0,) and model.box_sizes == (0.3, 0.6)


# -- outputs -----------------------------------------------------------------------------------
def test_predict_outputs_keys_shapes_and_instances():
    model = build(top_k=2, top_classes=2).eval()
    images, _ = batch(3)
    predictions = model.predict(images)
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"scores", "score_maps", "instances"}
        assert p["scores"].shape == (C,) and p["score_maps"].shape == (C, 8, 8)
        inst = p["instances"]
        n = inst["scores"].shape[0]
        assert set(inst) == {"boxes", "classes", "scores"} and 1 <= n <= 4
        assert inst["boxes"].shape == (n, 4) and inst["classes"].dtype == torch.int64
        assert (inst["classes"] != 0).all() and len(set(inst["classes"].tolist())) <= 2
        boxes = inst["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all() and boxes.min() >= 0 and boxes.max() <= 32
        assert ((inst["scores"] > 0) & (inst["scores"] < 1)).all()
        assert (inst["scores"][:-1] >= inst["scores"][1:]).all()


def test_rescored_classes_take_their_best_box_score():
    model = build(top_k=3, top_classes=2, fuse="mean").eval()
    images, _ = batch(2)
    first, _ = model(images)
    for b, p in enumerate(model.predict(images)):
        inst = p["instances"]
        for c in range(C):
            mine = inst["classes"] == c
            if mine.any():
                torch.testing.assert_close(p["scores"][c], torch.logit(inst["scores"][mine].max().double()).float(),
                                           atol=1e-4, rtol=1e-4)
            else:
                torch.testing.assert_close(p["scores"][c], first[b, c])


def test_multi_scale_maps_average_at_the_finest_resolution_and_scores_max_over_scales():
    from segbench_pronet.model import spatial_pool

    model = build(scales=(1.0, 0.5), pool="max").eval()
    images, _ = batch(2)
    scores, maps = model(images)
    per_scale = model.scale_maps(images)
    assert [tuple(m.shape[-2:]) for m in per_scale] == [(8, 8), (4, 4)]
    expected = torch.maximum(spatial_pool(per_scale[0], "max"), spatial_pool(per_scale[1], "max"))
    torch.testing.assert_close(scores, expected)
    up = F.interpolate(per_scale[1], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(maps, (per_scale[0] + up) / 2)


def test_lse_pooling_lies_between_mean_and_max():
    from segbench_pronet.model import spatial_pool

    maps = torch.randn(2, 3, 5, 5)
    lse = spatial_pool(maps, "lse", 5.0)
    assert (lse <= maps.amax((2, 3)) + 1e-6).all() and (lse >= maps.mean((2, 3)) - 1e-6).all()
    torch.testing.assert_close(spatial_pool(maps, "lse", 100.0), maps.amax((2, 3)), atol=0.05, rtol=0)


# -- losses ------------------------------------------------------------------------------------
def test_loss_terms_match_their_formulas():
    model = build(cascade_weight=0.5).eval()
    images, targets = batch(3)
    labels = torch.stack([t["labels"] for t in targets])
    out = model.loss(images, targets)
    assert set(out) == {"loss_proposal", "loss_cascade"}
    scores, maps = model(images)
    torch.testing.assert_close(out["loss_proposal"], F.binary_cross_entropy_with_logits(scores, labels))
    image, classes, boxes = model.training_boxes(scores, maps, labels, (32, 32))
    logits = model.cascade(model.crops(images, image, boxes))
    torch.testing.assert_close(out["loss_cascade"], 0.5 * F.binary_cross_entropy_with_logits(logits, labels[image]))


def test_class_crop_labels_ignore_the_other_present_classes():
    model = build(crop_labels="class", train_boxes=2).eval()
    images, targets = batch(2)
    labels = torch.stack([t["labels"] for t in targets])
    labels[0, 4] = 1.0  # image 0 has classes 1 and 4
    targets = [{"labels": row} for row in labels]
    scores, maps = model(images)
    image, classes, boxes = model.training_boxes(scores, maps, labels, (32, 32))
    logits = model.cascade(model.crops(images, image, boxes))
    assert image.tolist() == [0, 0, 1, 1] and set(classes[:2].tolist()) == {1, 4} and classes[2] == 2
    per = F.binary_cross_entropy_with_logits(logits, labels[image], reduction="none")
    weight = torch.ones_like(per)
    for row, (i, c) in enumerate(zip(image.tolist(), classes.tolist())):
        for k in range(C):
            if labels[i, k] == 1 and k != c:
                weight[row, k] = 0.0  # a class present in the image, but not the one the box was proposed for
    assert weight.sum() == 4 * C - 3  # crops 0, 1 drop one class each; crop 3 (a hard negative) drops class 2
    torch.testing.assert_close(model.loss(images, targets)["loss_cascade"], (per * weight).sum() / weight.sum())


def test_loss_backward_reaches_both_networks_and_decreases():
    model = build().train()
    images, targets = batch(4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    values = []
    for step in range(12):
        out = model.loss(images, targets)
        loss = sum(out.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for part in (model.backbone, model.head, model.cascade):
                assert all(p.grad is not None for p in part.parameters())
                assert sum(float(p.grad.abs().sum()) for p in part.parameters()) > 0
        optimizer.step()
        values.append(float(loss.detach()))
    assert values[-1] < 0.6 * values[0]


def test_labels_of_the_wrong_size_are_a_data_error():
    model = build()
    images, _ = batch(2)
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)
