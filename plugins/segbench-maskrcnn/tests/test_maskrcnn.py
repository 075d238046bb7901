"""Tests of the Mask R-CNN plugin: registration, target conversion, losses, outputs, options, weights, a run."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

import pytest
import torch

from segbench.engine.config import TrainConfig
from segbench.errors import ConfigError, DataError, OfflineError
from segbench_maskrcnn import OPTIONS, RECIPES, method_spec
from segbench_maskrcnn.model import DetectorTransform, MaskRCNN, box_regions
from segbench_maskrcnn.outputs import class_scores, label_map, score_maps

os.environ.setdefault("HF_HUB_OFFLINE", "1")
C = 4  # background + 3 classes
TINY = {
    "backbone": "test_resnet", "fpn_strides": [8, 16], "out_channels": 8, "anchor_sizes": [8, 16, 32],
    "image_min_size": 0, "rpn_pre_nms_top_n_train": 50, "rpn_pre_nms_top_n_test": 50, "rpn_post_nms_top_n_train": 20,
    "rpn_post_nms_top_n_test": 20, "rpn_batch_size_per_image": 16, "box_batch_size_per_image": 16,
    "box_detections_per_img": 10, "box_score_thresh": 0.0, "representation_size": 16, "mask_head_channels": 8,
    "mask_head_layers": 1,
}


def tiny(seed: int = 0, **options) -> MaskRCNN:
    torch.manual_seed(seed)
    return MaskRCNN(C, **{**TINY, **options})


def square_mask(h: int, w: int, box) -> torch.Tensor:
    mask = torch.zeros(h, w, dtype=torch.bool)
    x1, y1, x2, y2 = box
    mask[y1:y2, x1:x2] = True
    return mask


def target(boxes, classes, crowd=None, h: int = 32, w: int = 32) -> dict:
    n = len(classes)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(n, 4),
        "classes": torch.tensor(classes, dtype=torch.int64),
        "masks": torch.stack([square_mask(h, w, b) for b in boxes]) if n else torch.zeros(0, h, w, dtype=torch.bool),
        "iscrowd": torch.tensor(crowd if crowd is not None else [False] * n),
        "labels": torch.zeros(C),
    }


def batch():
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    targets = [
        target([[2, 3, 14, 15], [16, 16, 30, 28]], [1, 3]),
        target([], []),  # an image without instances
        target([[4, 4, 20, 20], [0, 0, 32, 32]], [2, 1], crowd=[False, True]),  # and a crowd region
    ]
    return images, targets


# -- registration ----------------------------------------------------------------------------------
def test_registers_mask_rcnn_through_the_entry_point():
    from segbench.plugins import Registry

    registry = Registry().load()
    spec = registry.methods["mask_rcnn"]
    spec.validate()
    assert spec.plugin == "maskrcnn" and spec.supervision == "instance"
    assert spec.outputs == {"instances", "mask", "score_maps", "scores"}
    assert set(spec.recipes) == {"quick", "bench", "paper"} and spec.options == OPTIONS
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for recipe in spec.recipes.values():
        assert set(recipe.train) <= train_keys, set(recipe.train) - train_keys
        assert set(recipe.model) <= set(OPTIONS)
    paper = spec.recipes["paper"]
    assert paper.model["backbone"] == "resnet50_fpn" and paper.model["pretrained"] == "imagenet"
    assert (paper.model["image_min_size"], paper.model["image_max_size"]) == (800, 1333)
    assert (paper.train["lr"], paper.train["batch_size"], paper.train["steps"]) == (0.02, 16, 90_000)


def test_option_names_do_not_clash_with_dataset_metric_or_train_keys():
    """``--set KEY=...`` must find one owner: no option shares a name with another section (engine-filled aside)."""
    from segbench.plugins import Registry

    registry = Registry().load()
    others = {f.name for f in dataclasses.fields(TrainConfig)}
    method = registry.method("mask_rcnn")  # only datasets it can train on can share a --set with it
    others |= {k for spec in registry.datasets.values() if method.requires_annotations <= spec.annotations
               for k in spec.options}
    others |= {k for spec in registry.metrics.values() for k in spec.options if k not in ("num_classes", "background")}
    assert not set(OPTIONS) & others


def test_importing_the_plugin_does_not_import_torch():
    code = "import sys, segbench_maskrcnn; segbench_maskrcnn.method_spec(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_options_build_torchvisions_maskrcnn_resnet50_fpn():
    """Same modules and parameter shapes as torchvision's constructor (91 COCO labels = 90 classes + background)."""
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = method_spec().build(91, **OPTIONS)
        reference = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    assert isinstance(ours, type(reference))
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    assert ours.transform.min_size == (800,) and ours.transform.max_size == 1333
    assert ours.rpn._pre_nms_top_n == {"training": 2000, "testing": 1000}
    assert ours.roi_heads.detections_per_img == 100


# -- outputs -------------------------------------------------------------------------------------------
def test_label_map_pastes_by_score_the_highest_wins():
    h, w = 6, 8
    masks = torch.stack([square_mask(h, w, b) for b in ([0, 0, 5, 4], [3, 2, 8, 6], [1, 1, 4, 6], [6, 0, 8, 2])])
    classes = torch.tensor([1, 2, 3, 1])
    scores = torch.tensor([0.6, 0.9, 0.7, 0.3])
    out = label_map(masks, classes, scores, background=0, min_score=0.5)
    expected = torch.zeros(h, w, dtype=torch.int64)
    for k in (0, 2, 1):  # pasted in increasing score order; instance 3 is below min_score
        expected[masks[k]] = classes[k]
    assert out.dtype == torch.int64 and torch.equal(out, expected)
    assert out[1, 1] == 3 and out[3, 3] == 2 and out[0, 0] == 1 and out[0, 7] == 0
    assert torch.equal(label_map(masks, classes, scores, background=5, min_score=0.95), torch.full((h, w), 5))
    assert torch.equal(label_map(masks[:0], classes[:0], scores[:0], background=0), torch.zeros(h, w).long())


def test_score_maps_and_scores_take_the_per_class_max():
    probs = torch.tensor([[[0.9, 0.1]], [[0.2, 0.8]], [[1.0, 1.0]]])  # 3 instances, 1 x 2 image
    classes = torch.tensor([1, 1, 3])
    scores = torch.tensor([0.5, 0.8, 0.25])
    maps = score_maps(probs, classes, scores, num_classes=5, background=0)
    torch.testing.assert_close(maps[1], torch.tensor([[0.45, 0.64]]))
    torch.testing.assert_close(maps[3], torch.tensor([[0.25, 0.25]]))
    assert not maps[2].any() and not maps[4].any()
    torch.testing.assert_close(maps[0], 1 - torch.tensor([[0.45, 0.64]]))
    torch.testing.assert_close(class_scores(classes, scores, 5, 0), torch.tensor([0.2, 0.8, 0.0, 0.25, 0.0]))
    torch.testing.assert_close(class_scores(classes[:0], scores[:0], 5, 2), torch.tensor([0.0, 0.0, 1.0, 0.0, 0.0]))


def test_predict_keys_shapes_dtypes_and_consistency():
    model = tiny().eval()
    images, _ = batch()
    predictions = model.predict(images[:, :, :, :28])  # a width that is not a multiple of 32
    assert len(predictions) == 3 and not model.training
    for p in predictions:
        inst = p["instances"]
        n = len(inst["scores"])
        assert 0 < n <= TINY["box_detections_per_img"]
        assert inst["boxes"].shape == (n, 4) and inst["classes"].dtype == torch.int64
        assert inst["masks"].shape == (n, 32, 28) and inst["masks"].dtype == torch.bool
        assert ((inst["classes"] >= 1) & (inst["classes"] < C)).all()  # never the background
        assert p["mask"].shape == (32, 28) and p["mask"].dtype == torch.int64
        assert p["score_maps"].shape == (C, 32, 28) and p["scores"].shape == (C,)
        for c in range(1, C):
            mine = inst["scores"][inst["classes"] == c]
            assert p["scores"][c] == (mine.max() if len(mine) else 0.0)
        keep = inst["scores"] >= OPTIONS["mask_score_threshold"]
        assert torch.equal(p["mask"], label_map(inst["masks"][keep], inst["classes"][keep], inst["scores"][keep], 0))


def test_predict_restores_training_mode():
    model = tiny().train()
    model.predict(torch.zeros(1, 3, 32, 32))
    assert model.training


def test_background_index_maps_to_detector_label_zero():
    model = tiny(background=2).eval()
    assert model.to_label.tolist() == [1, 2, -1, 3] and model.to_class.tolist() == [2, 0, 1, 3]
    t = model._detector_target(target([[1, 1, 9, 9], [2, 2, 8, 8]], [3, 0]), 0, (32, 32))
    assert t["labels"].tolist() == [3, 1]
    for p in model.predict(torch.randn(2, 3, 32, 32)):
        assert (p["instances"]["classes"] != 2).all() and p["scores"].shape == (C,)


# -- training ------------------------------------------------------------------------------------------
def test_targets_drop_crowd_instances_and_degenerate_boxes():
    model = tiny()
    t = target([[4, 4, 20, 20], [0, 0, 32, 32], [5, 5, 5, 9]], [2, 1, 3], crowd=[False, True, False])
    converted = model._detector_target(t, 0, (32, 32))
    assert converted["labels"].tolist() == [2]
    assert converted["boxes"].tolist() == [[4.0, 4.0, 20.0, 20.0]]
    assert converted["masks"].shape == (1, 32, 32) and converted["masks"].dtype == torch.uint8
    padded = target([[4, 4, 20, 20]], [2])
    padded["masks"][:, 28:] = True  # what a padding crop leaves in instance masks (filled with 255)
    padded["masks"][:, 10, 10] = False
    cut = model._detector_target(padded, 0, (32, 32))["masks"][0].bool()
    assert torch.equal(cut, square_mask(32, 32, [4, 4, 20, 20]) & ~square_mask(32, 32, [10, 10, 11, 11]))
    assert torch.equal(box_regions(torch.tensor([[1.5, 0.2, 3.0, 2.0]]), (4, 5))[0].long(),
                       torch.tensor([[0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]))
    empty = model._detector_target(target([], []), 1, (32, 32))
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape == (0, 32, 32)
    with pytest.raises(DataError, match="background class 0"):
        model._detector_target(target([[1, 1, 9, 9]], [0]), 2, (32, 32))


def test_loss_is_finite_with_an_empty_image_and_a_crowd_instance():
    model = tiny().train()
    images, targets = batch()
    losses = model.loss(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    for name in ("backbone.fpn.inner_blocks.0.0.weight", "rpn.head.cls_logits.weight",
                 "roi_heads.box_predictor.cls_score.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    # an all-empty batch still trains the RPN and the classifier (everything is background)
    model.zero_grad()
    empty = model.loss(images[:2], [target([], []), target([], [])])
    assert all(torch.isfinite(v) for v in empty.values()) and empty["loss_mask"] == 0
    with pytest.raises(RuntimeError, match="training mode"):
        model.eval().loss(images, targets)


# -- the detector's transform -----------------------------------------------------------------------------
def test_transform_does_not_normalise_and_resizes_only_when_asked():
    images = [torch.randn(3, 40, 50)]
    keep = DetectorTransform(None, 1333).eval()
    batch_list, _ = keep(images)
    assert batch_list.image_sizes == [(40, 50)] and batch_list.tensors.shape == (1, 3, 64, 64)
    assert torch.equal(batch_list.tensors[0, :, :40, :50], images[0])  # no mean / std applied
    assert not batch_list.tensors[0, :, 40:].any()
    resized, _ = DetectorTransform((80,), 1333).eval()(images)
    assert resized.image_sizes == [(80, 100)]
    capped, _ = DetectorTransform((80,), 90).eval()(images)
    assert capped.image_sizes == [(72, 90)]


# -- options --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "options, message",
    [
        ({"anchor_sizes": [8, 16]}, "anchor_sizes must have one size per pyramid level: 3"),
        ({"fpn_strides": [16, 8]}, "fpn_strides must be a non-empty increasing list"),
        ({"fpn_strides": [4, 64]}, "no feature map at stride 64"),
        ({"image_min_size": -1}, "min_size must be 0"),
        ({"box_batch_size_per_image": 0}, "box_batch_size_per_image must be a positive integer"),
        ({"instance_mask_threshold": 1.5}, r"mask_threshold must be a number in \[0, 1\]"),
        ({"pretrained": "yes"}, "pretrained must be false, true"),
        ({"pretrained": "coco"}, "coco needs backbone resnet50_fpn"),
        ({"background": 4}, "background must be the background class index in 0..3"),
        ({"trainable_layers": 2}, "trainable_layers applies to the torchvision backbones"),
        ({"backbone": "resnet18_fpn", "backbone_args": {"x": 1}}, "backbone_args apply to timm backbones"),
        ({"backbone": "resnet18_fpn", "fpn_strides": [2, 4]}, "stages at strides"),
        ({"weights": "/nonexistent/model.safetensors"}, "weights file not found"),
        ({"no_such": 1}, "no option"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        tiny(**options)


def test_pretrained_offline_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty cache
    for options in ({"backbone": "resnet18_fpn", "pretrained": True},
                    {"backbone": "resnet50_fpn", "pretrained": "coco"}):
        start = time.perf_counter()
        with pytest.raises(OfflineError, match="cannot be downloaded .*--weights PATH"):
            tiny(**{**options, "fpn_strides": [8, 16, 32], "anchor_sizes": [8, 16, 32, 64]})
        assert time.perf_counter() - start < 5
    # a file in the torch hub cache is used without any connection
    from torchvision.models import ResNet18_Weights, resnet18

    cache = tmp_path / "checkpoints"
    cache.mkdir()
    torch.manual_seed(5)
    classifier = resnet18()
    torch.save(classifier.state_dict(), cache / os.path.basename(ResNet18_Weights.IMAGENET1K_V1.url))
    model = tiny(backbone="resnet18_fpn", pretrained="imagenet", fpn_strides=[8, 16, 32], anchor_sizes=[8, 16, 32, 64])
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, classifier.layer4[1].conv2.weight)


def test_torchvision_resnet_body_is_frozen_as_torchvision_does_when_weights_are_given(tmp_path):
    from torchvision.models import resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    path = tmp_path / "resnet18.pth"
    torch.manual_seed(3)
    classifier = resnet18()
    torch.save(classifier.state_dict(), path)
    options = {"backbone": "resnet18_fpn", "fpn_strides": [8, 16, 32], "anchor_sizes": [8, 16, 32, 64]}
    model = tiny(weights=str(path), **options)
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, classifier.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad  # trainable_layers defaults to 3 (layer2..layer4)
    with pytest.raises(ConfigError, match="neither a Mask R-CNN nor a resnet34 state dict"):
        tiny(weights=str(path), **{**options, "backbone": "resnet34_fpn"})
    scratch = tiny(**options)
    assert isinstance(scratch.backbone.body.bn1, torch.nn.BatchNorm2d)
    assert scratch.backbone.body.conv1.weight.requires_grad


def test_whole_model_weights_round_trip_and_must_fit(tmp_path):
    from safetensors.torch import save_file

    source = tiny(seed=1)
    path = tmp_path / "run.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    loaded = tiny(seed=2, weights=str(path))
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    other_classes = MaskRCNN(6, **{**TINY, "weights": str(path)})  # the class-specific layers start afresh
    assert other_classes.roi_heads.box_predictor.cls_score.out_features == 6
    assert torch.equal(other_classes.rpn.head.conv[0][0].weight, source.rpn.head.conv[0][0].weight)
    with pytest.raises(ConfigError, match="do not fit the options"):
        tiny(weights=str(path), representation_size=32)


# -- a run ------------------------------------------------------------------------------------------------
def test_two_step_run_on_shapes_gives_coco_ap_and_the_dense_metrics(tmp_path):
    from segbench.engine.run import run_experiment

    overrides = {**TINY, "fpn_strides": [8, 16], "steps": 2, "batch_size": 2, "eval_batch_size": 4,
                 "warmup_steps": 0, "image_size": 32, "num_train": 4, "num_val": 4, "threads": 1}
    outcome = run_experiment("mask_rcnn", "shapes", recipe="quick", overrides=overrides, runs=tmp_path,
                             progress=False)
    record = outcome.record
    assert record["status"] == "finished"
    metrics = record["metrics"]
    for key in ("coco_ap_segm", "coco_ap50_segm", "coco_ap_bbox", "coco_ar100_segm", "miou", "cls_map", "loc_map"):
        assert key in metrics, sorted(metrics)
    assert 0.0 <= metrics["coco_ap50_segm"] <= 1.0 and 0.0 <= metrics["miou"] <= 1.0
    assert record["config"]["model"]["backbone"] == "test_resnet"



def test_loss_cuts_a_padded_image_back_to_its_own_size_before_the_detectors_resize(monkeypatch):
    """A batch padded by the engine: the detector sees each image at its own size, masks cut to match."""
    import torch

    from segbench.plugins import get_registry

    spec = get_registry().method("mask_rcnn")
    model = spec.build(4, **{**spec.options, **spec.recipes["quick"].model})
    model.train()
    seen = {}

    def fake_forward(images, targets=None):
        seen["sizes"] = [tuple(i.shape[-2:]) for i in images]
        seen["masks"] = [tuple(t["masks"].shape) for t in targets]
        return {"loss": torch.zeros(())}

    monkeypatch.setattr(model, "forward", fake_forward)
    images = torch.zeros(2, 3, 40, 50)
    mask = torch.zeros(1, 40, 50, dtype=torch.bool)
    mask[0, 2:10, 3:12] = True
    targets = [{"boxes": torch.tensor([[3.0, 2.0, 12.0, 10.0]]), "classes": torch.tensor([1]), "masks": mask,
                "iscrowd": torch.tensor([False]), "valid_size": (30, 50)},
               {"boxes": torch.tensor([[3.0, 2.0, 12.0, 10.0]]), "classes": torch.tensor([2]), "masks": mask,
                "iscrowd": torch.tensor([False]), "valid_size": (40, 50)}]
    model.loss(images, targets)
    assert seen["sizes"] == [(30, 50), (40, 50)] and seen["masks"] == [(1, 30, 50), (1, 40, 50)]
