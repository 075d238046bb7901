"""miou against torchmetrics and hand-computed confusion matrices."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

import segbench
from segbench.errors import ConfigError, DataError


def miou(num_classes=3, **options):
    return segbench.create_metric("miou", num_classes=num_classes, **options)


def update(metric, preds, gts):
    metric.update([{"mask": torch.as_tensor(p)} for p in preds], [{"mask": torch.as_tensor(g)} for g in gts])
    return metric


def test_registration_imports_no_torch():
    code = "import sys, segbench.metrics.builtin, segbench.metrics; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_builtin_plugin_registers_the_core_metrics():
    info = segbench.plugins.get_registry().plugins["segbench.metrics.builtin"]
    assert info.ok, info.error
    assert {"metric:cls_map", "metric:loc_map", "metric:miou"} <= set(info.registered)


def test_spec_options_and_primary():
    spec = segbench.plugins.get_registry().metric("miou")
    assert spec.options == {"num_classes": None, "ignore_index": 255, "background": None}
    assert spec.primary == "miou"
    assert spec.requires_outputs == {"mask"} and spec.requires_annotations == {"mask"}


def test_hand_computed_3x3():
    gt = [[0, 0, 1], [1, 2, 2], [255, 2, 0]]
    pred = [[0, 1, 1], [1, 2, 0], [2, 2, 0]]
    m = update(miou(), [pred], [gt])
    # rows = ground truth, columns = prediction; the void pixel is not counted
    assert m.confmat.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 2]]
    out = m.compute()
    iou = [2 / (3 + 3 - 2), 2 / (2 + 3 - 2), 2 / (3 + 2 - 2)]
    assert m.per_class()["miou"] == pytest.approx(iou)
    assert m.per_class()["mean_acc"] == pytest.approx([2 / 3, 1.0, 2 / 3])
    assert out["miou"] == pytest.approx(sum(iou) / 3)
    assert out["pixel_acc"] == pytest.approx(6 / 8)
    assert out["mean_acc"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)
    assert out["fw_iou"] == pytest.approx(3 / 8 * iou[0] + 2 / 8 * iou[1] + 3 / 8 * iou[2])


def test_one_confusion_matrix_not_mean_of_per_image_ious():
    # image 1: 8 pixels, all class 0, all correct; image 2: one class-1 pixel predicted as 0
    m = update(miou(2), [torch.zeros(2, 4, dtype=torch.long), [[0]]], [torch.zeros(2, 4, dtype=torch.long), [[1]]])
    dataset_iou = [8 / 9, 0.0]  # class 0: tp 8, fp 1
    assert m.compute()["miou"] == pytest.approx(sum(dataset_iou) / 2)
    per_image = [1.0, (0.0 + 0.0) / 2]  # image 1: class 0 only (1.0); image 2: IoU 0 for both classes
    assert sum(per_image) / 2 == 0.5 and m.compute()["miou"] == pytest.approx(4 / 9)


def test_absent_class_left_out_of_the_mean():
    # class 2 absent from ground truth and predictions; class 3 predicted but never in the ground truth
    gt = [[0, 0, 1, 1]]
    pred = [[0, 3, 1, 1]]
    m = update(miou(4), [pred], [gt])
    iou, acc = m.per_class()["miou"], m.per_class()["mean_acc"]
    assert iou[:2] == pytest.approx([0.5, 1.0]) and math.isnan(iou[2]) and iou[3] == 0.0
    assert acc[:2] == pytest.approx([0.5, 1.0]) and math.isnan(acc[2]) and math.isnan(acc[3])
    assert m.compute()["miou"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert m.compute()["mean_acc"] == pytest.approx(0.75)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_torchmetrics_where_every_class_appears(seed):
    g = torch.Generator().manual_seed(seed)
    c = 6
    gts = torch.randint(0, c, (5, 17, 23), generator=g)
    preds = torch.where(torch.rand(gts.shape, generator=g) < 0.6, gts, torch.randint(0, c, gts.shape, generator=g))
    gts[torch.rand(gts.shape, generator=g) < 0.1] = 255
    preds[0, 0, 0], gts[0, 0, 0] = 200, 255  # an out-of-range prediction on a void pixel is not counted
    ours = miou(c)
    ref = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="none")
    ref_macro = MulticlassJaccardIndex(num_classes=c, ignore_index=255, average="macro")
    for i in range(0, 5, 2):
        update(ours, preds[i:i + 2], gts[i:i + 2])
        p = preds[i:i + 2].clamp(max=c - 1)  # torchmetrics validates preds even where the target is void
        ref.update(p, gts[i:i + 2])
        ref_macro.update(p, gts[i:i + 2])
    assert ours.per_class()["miou"] == pytest.approx(ref.compute().tolist(), abs=1e-6)
    assert ours.compute()["miou"] == pytest.approx(ref_macro.compute().item(), abs=1e-6)


def test_out_of_range_prediction_is_a_clear_error():
    m = miou(3)
    with pytest.raises(DataError, match=r"predicted class 3 is outside 0\.\.2"):
        update(m, [[[0, 3]]], [[[0, 1]]])
    with pytest.raises(DataError, match=r"predicted class -1"):
        update(m, [[[0, -1]]], [[[0, 1]]])
    update(m, [[[0, 9]]], [[[0, 255]]])  # anything goes on a void pixel
    assert m.confmat.sum() == 1


def test_bad_target_values_and_shapes():
    m = miou(3)
    with pytest.raises(DataError, match=r"target mask has class 7"):
        update(m, [[[0, 1]]], [[[0, 7]]])
    with pytest.raises(DataError, match=r"target mask has class 7"):  # beside void pixels (fast path)
        update(m, [[[0, 1, 2]]], [[[0, 7, 255]]])
    with pytest.raises(DataError, match=r"target mask has class -2"):
        update(m, [[[0, 1]]], [[[0, -2]]])
    with pytest.raises(DataError, match="shape"):
        update(m, [[[0, 1, 1]]], [[[0, 1]]])
    with pytest.raises(DataError, match="integer"):
        update(m, [torch.zeros(1, 2)], [[[0, 1]]])
    with pytest.raises(DataError, match="'mask'"):
        m.update([{"scores": torch.zeros(3)}], [{"mask": torch.zeros(1, 2, dtype=torch.long)}])
    assert m.confmat.sum() == 0


def test_options():
    with pytest.raises(ConfigError, match="needs num_classes"):
        segbench.create_metric("miou")
    with pytest.raises(ConfigError, match="ignore_index 1 is a class index"):
        miou(3, ignore_index=1)
    m = update(miou(3, ignore_index=-1), [[[0, 2, 1]]], [[[0, -1, 1]]])
    assert m.compute()["pixel_acc"] == 1.0
    m = update(miou(3, ignore_index=None), [[[0, 2, 1]]], [[[0, 2, 2]]])
    assert m.confmat.sum() == 3
    with pytest.raises(DataError, match="class 255"):
        update(m, [[[0]]], [[[255]]])
    # background excluded from the means when asked (VOC keeps it: the default is None)
    m = update(miou(3, background=0), [[[0, 1, 2, 2]]], [[[0, 1, 1, 2]]])
    assert math.isnan(m.per_class()["miou"][0])
    assert m.compute()["miou"] == pytest.approx((0.5 + 0.5) / 2)


def test_streaming_reset_and_ddp_state_merge():
    g = torch.Generator().manual_seed(3)
    preds, gts = torch.randint(0, 4, (2, 4, 9, 9), generator=g)
    whole = update(miou(4), preds, gts)
    a, b = update(miou(4), preds[:1], gts[:1]), update(miou(4), preds[1:], gts[1:])
    assert a.state_reductions == {"confmat": "sum"}
    merged = miou(4)
    merged.load_state_tensors({"confmat": a.state_tensors()["confmat"] + b.state_tensors()["confmat"]})
    assert merged.compute() == pytest.approx(whole.compute())
    assert torch.equal(merged.confmat, whole.confmat)
    whole.reset()
    assert whole.confmat.sum() == 0 and math.isnan(whole.compute()["miou"])


def test_fast_and_checked_histograms_agree():
    g = torch.Generator().manual_seed(4)
    gt = torch.randint(0, 5, (5000,), generator=g)
    gt[torch.rand(5000, generator=g) < 0.2] = 255
    pred = torch.randint(0, 5, (5000,), generator=g)
    m = miou(5)
    fast, checked = m._histogram([(pred, gt)]), m._histogram_checked(pred, gt)
    assert torch.equal(fast, checked) and int(fast.sum()) == int((gt != 255).sum())


def reference_confmat(preds, gts, c, ignore=255):
    """Image by image, pixel pairs counted with a plain bincount: the matrix as it was summed before batching."""
    total = torch.zeros((c, c), dtype=torch.int64)
    for p, g in zip(preds, gts):
        p, g = torch.as_tensor(p).reshape(-1).long(), torch.as_tensor(g).reshape(-1).long()
        valid = g != ignore if ignore is not None else torch.ones_like(g, dtype=torch.bool)
        total += torch.bincount(g[valid] * c + p[valid], minlength=c * c).view(c, c)
    return total


@pytest.mark.parametrize("step", [(1 << 15) - 1, 700, 1])
def test_a_batch_counted_in_one_pass_equals_image_by_image(step):
    g = torch.Generator().manual_seed(step)
    c = 7
    for ignore in (255, None, -1):
        preds, gts = [], []
        for h, w in [(9, 13), (9, 13), (1, 40), (0, 5), (20, 17), (3, 3)]:
            gt = torch.randint(0, c, (h, w), generator=g)
            if ignore is not None:
                gt[torch.rand(gt.shape, generator=g) < 0.15] = ignore
            preds.append(torch.randint(0, c, (h, w), generator=g))
            gts.append(gt.to(torch.uint8) if ignore == 255 and h == 9 else gt)  # uint8 targets beside int64
        m = miou(c, ignore_index=ignore)
        m.STEP = m.STEP_ONE_THREAD = step
        update(m, preds, gts)
        update(m, [preds[4].reshape(-1)], [gts[4].reshape(-1)])  # flat masks, as trimap's bands give them
        expected = reference_confmat(preds + [preds[4]], gts + [gts[4]], c, ignore)
        assert torch.equal(m.confmat, expected), ignore
        assert torch.equal(m.confmat, update(miou(c, ignore_index=ignore), preds, gts).confmat + reference_confmat(
            [preds[4]], [gts[4]], c, ignore))


def test_a_bad_image_in_a_batch_adds_nothing():
    m = update(miou(3), [[[0, 1]]], [[[0, 1]]])
    with pytest.raises(DataError, match=r"target mask has class 7"):
        update(m, [[[0, 1]], [[1, 1]]], [[[0, 1]], [[7, 255]]])
    with pytest.raises(DataError, match=r"predicted class 5"):
        update(m, [[[0, 1]], [[1, 5]]], [[[0, 1]], [[1, 2]]])
    with pytest.raises(DataError, match="predicted mask 1 has shape"):
        update(m, [[[0, 1]], [[1, 1, 1]]], [[[0, 1]], [[1, 1]]])
    assert m.confmat.tolist() == [[1, 0, 0], [0, 1, 0], [0, 0, 0]]
