"""The cam method: registration, the GAP(CAM) == logits identity, outputs, loss and options."""

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
TINY = {"backbone": "test_resnet", "out_index": 1}  # stride 4: 32 px images -> 8x8 maps


def build(**options):
    torch.manual_seed(0)
    return segbench.create_method("cam", C, **{**TINY, **options})


def batch(n: int = 3, size: int = 32):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(n, 3, size, size, generator=g)
    labels = torch.zeros(n, C)
    for i in range(n):
        labels[i, 1 + i % (C - 1)] = 1.0
    return images, [{"labels": row} for row in labels]


def test_spec_is_registered_from_the_entry_point():
    spec = get_registry().method("cam")
    assert spec.supervision == "image" and spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    assert "Zhou" in spec.paper and "CVPR 2016" in spec.paper
    paper = spec.recipes["paper"].model
    assert paper["pretrained"] is True and paper["extra_conv"] == 1024
    assert paper["dropout"] == 0.5  # CAM_dropout of the authors' deploy_vgg16CAM.prototxt
    assert get_registry().plugins["cam"].ok


def test_plugin_import_does_not_import_torch():
    code = "import sys, segbench_cam; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize(
    "options, size", [({}, (32, 32)), ({"extra_conv": 12}, (40, 56)), ({"out_index": 2}, (64, 48))]
)
def test_global_average_of_the_cams_is_the_logits(options, size):
    model = build(**options).eval()
    scores, maps = model(torch.randn(2, 3, *size))
    torch.testing.assert_close(maps.mean((2, 3)), scores, atol=1e-5, rtol=1e-5)


def test_cam_is_the_classifier_applied_at_every_position():
    model = build().eval()
    images, _ = batch(2)
    features = model.features(images)
    _, maps = model(images)
    w, b = model.fc.weight, model.fc.bias
    # one position by hand: CAM_c(x, y) = sum_k w_ck f_k(x, y) + b_c
    torch.testing.assert_close(maps[1, :, 3, 5], w @ features[1, :, 3, 5] + b)
    torch.testing.assert_close(maps, torch.einsum("ck,bkhw->bchw", w, features) + b[None, :, None, None])


def test_predict_outputs_keys_shapes_dtypes():
    model = build().eval()
    predictions = model.predict(batch(3)[0])
    assert len(predictions) == 3
    for p in predictions:
        assert set(p) == {"scores", "score_maps"}
        assert p["scores"].shape == (C,) and p["scores"].dtype == torch.float32
        assert p["score_maps"].shape == (C, 8, 8) and p["score_maps"].dtype == torch.float32


def test_out_index_and_output_stride_set_the_cam_resolution():
    images = torch.randn(1, 3, 64, 64)
    assert build(out_index=2).predict(images)[0]["score_maps"].shape == (C, 8, 8)  # stride 8
    assert build(out_index=3).predict(images)[0]["score_maps"].shape == (C, 4, 4)  # stride 16
    assert build(out_index=3, output_stride=8).predict(images)[0]["score_maps"].shape == (C, 8, 8)  # dilated


def test_loss_is_bce_and_honours_labels_ignore():
    model = build().eval()
    images, targets = batch(2)
    scores, _ = model(images)
    labels = torch.stack([t["labels"] for t in targets])
    torch.testing.assert_close(model.loss(images, targets)["loss"], F.binary_cross_entropy_with_logits(scores, labels))
    ignore = torch.zeros(C, dtype=torch.bool)
    ignore[4] = True
    per = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    keep = torch.ones_like(per, dtype=torch.bool)
    keep[0, 4] = False
    loss = model.loss(images, [{**targets[0], "labels_ignore": ignore}, targets[1]])["loss"]
    torch.testing.assert_close(loss, per[keep].mean())
    with pytest.raises(DataError, match="labels have shape"):
        model.loss(images, [{"labels": torch.zeros(C + 1)}] * 2)


def test_gradients_reach_the_classifier_through_the_gap():
    model = build(extra_conv=8).train()
    model.loss(*batch(2))["loss"].backward()
    assert model.fc.weight.grad.abs().sum() > 0 and model.extra[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "options, match",
    [({"extra_conv": -1}, "cam: extra_conv must be an integer >= 0, got -1"),
     ({"extra_conv": 3.5}, "extra_conv must be an integer >= 0"),
     ({"dropout": 1.0}, r"cam: dropout must be a number in \[0, 0.99\], got 1.0"),
     ({"dropout": -0.1}, r"dropout must be a number in \[0, 0.99\]"),
     ({"out_index": 9}, "out_index"), ({"backbone_args": 3}, "backbone_args"),
     ({"backbone": "no_such_net"}, "no_such_net"), ({"nope": 1}, "nope")],
)
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=match) as info:
        build(**options)
    assert "\n" not in str(info.value)
