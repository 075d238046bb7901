"""max_box_acc, pxap and pointing_game: hand-computed cases, independent references, state merging, a CLI run."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from sklearn.metrics import average_precision_score

import segbench
from segbench.engine.distributed import merge_states
from segbench.errors import ConfigError, DataError
from segbench.metrics.components import superlevel_components
from segbench.metrics.wsol_maps import normalise, quantise


def target(boxes=(), classes=(), size=None, **extra):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
         "classes": torch.tensor(classes, dtype=torch.int64), **extra}
    if size is not None:
        t["size"] = size
    return t


def maps_of(c: int, h: int, w: int, blobs: dict[int, list[tuple[slice, slice, float]]]) -> torch.Tensor:
    maps = torch.zeros(c, h, w)
    for k, parts in blobs.items():
        for rows, cols, value in parts:
            maps[k, rows, cols] = value
    return maps


def metric(name, **options):
    return segbench.create_metric(name, **options)


# ---- components --------------------------------------------------------------------------------------------

def test_components_equal_scipy_label_at_every_level():
    rng = np.random.default_rng(0)
    structure = np.ones((3, 3), bool)
    for trial in range(60):
        h, w = (int(v) for v in rng.integers(1, 16, 2))
        q = rng.integers(0, 256 if trial % 2 else 4, (h, w)).astype(np.uint8) * (1 if trial % 2 else 80)
        levels = np.unique(rng.integers(0, 256, 12))
        got = list(zip(*(v.tolist() for v in superlevel_components(q, levels))))
        want = []
        for k, t in enumerate(levels):
            labels, _ = ndimage.label(q > t, structure)
            sizes = np.bincount(labels.ravel())
            for i, (rows, cols) in enumerate(ndimage.find_objects(labels)):
                want.append((k, sizes[i + 1], cols.start, rows.start, cols.stop - 1, rows.stop - 1))
        assert got == want, trial


# ---- max_box_acc -------------------------------------------------------------------------------------------

def test_spec_options_and_keys():
    registry = segbench.plugins.get_registry()
    assert registry.metric("max_box_acc").options == {
        "num_classes": None, "background": None, "cam_curve_interval": 0.01, "iou_thresholds": [30, 50, 70],
        "cam_threshold": None}
    assert registry.metric("pxap").options == {"num_classes": None, "background": None, "bins": 1000,
                                               "ignore_index": 255}
    assert registry.metric("pointing_game").options == {"num_classes": None, "background": None, "tolerance": 15,
                                                        "subset": "all"}
    for name in ("max_box_acc", "pxap", "pointing_game"):
        assert registry.metric(name).requires_outputs == {"score_maps"}


def test_added_metrics_at_their_defaults_leave_config_ids_alone():
    from segbench.engine.config import metrics_identity

    registry = segbench.plugins.get_registry()
    options = {name: {**registry.metric(name).options, "num_classes": 7, "background": 0}
               for name in ("max_box_acc", "pxap", "pointing_game")}
    assert metrics_identity({"miou": {"num_classes": 7}, **options}) == {"miou": {"num_classes": 7}}
    options["pxap"]["bins"] = 100
    assert set(metrics_identity(options)) == {"pxap"}


def test_largest_component_is_chosen_and_v2_matches_any_component():
    # blob A: 2 x 2 at rows 1-2, columns 1-2; blob B: 4 x 5 at rows 5-8, columns 4-8 (the largest)
    maps = maps_of(3, 10, 10, {1: [(slice(1, 3), slice(1, 3), 1.0), (slice(5, 9), slice(4, 9), 1.0)]})
    maps[2] = maps[1]
    m = metric("max_box_acc", background=0)
    m.update([{"score_maps": maps}], [target([[4, 5, 9, 9], [1, 1, 3, 3]], [1, 2])])  # B for class 1, A for 2
    out = m.compute()
    assert out["max_box_acc"] == 0.5 and out["gt_known_loc"] == 0.5  # class 2's box is the smaller blob
    assert out["max_box_acc_v2"] == 1.0  # every component: A matches class 2 exactly
    assert m.state_tensors()["samples"] == 2 and "top1_loc" not in out


def test_hole_is_not_a_component():
    maps = maps_of(2, 10, 10, {1: [(slice(1, 8), slice(1, 8), 1.0), (slice(3, 6), slice(3, 6), 0.0)]})
    m = metric("max_box_acc")
    m.update([{"score_maps": maps}], [target([[3, 3, 6, 6]], [1])])  # the hole's box: IoU 9/49 with the ring's
    assert m.compute()["max_box_acc_v2@iou30"] == 0.0
    m.reset()
    m.update([{"score_maps": maps}], [target([[1, 1, 8, 8]], [1])])
    assert m.compute()["max_box_acc_v2@iou70"] == 1.0


def test_threshold_edges_and_best_thresholds():
    # columns 0-1: 255, 2-3: 128, 4-5: 127, 6-7: 0 (after normalisation and uint8, checked below)
    row = torch.tensor([255, 255, 128, 128, 127, 127, 0, 0], dtype=torch.float32)
    maps = torch.stack([torch.zeros(4, 8), row.expand(4, 8).clone()])
    assert quantise(normalise(maps[1], "t"))[0].tolist() == [255, 255, 128, 128, 127, 127, 0, 0]
    m = metric("max_box_acc")
    m.update([{"score_maps": maps}], [target([[0, 0, 4, 4]], [1])])
    out = m.compute()
    # t <= 0.49 (cut <= 124): columns 0-5, IoU 16/24; t = 0.50 (cut 127): columns 0-3, IoU 1;
    # t >= 0.51 (cut >= 130): columns 0-1, IoU 8/16 = 0.5, still correct at IoU 0.5 (>=)
    assert out["max_box_acc"] == 1.0 and out["max_box_acc_threshold"] == 0.0
    assert out["max_box_acc_v2@iou70"] == 1.0 and out["max_box_acc_v2_threshold@iou70"] == 0.5
    assert out["max_box_acc_v2@iou30"] == 1.0 and out["max_box_acc_v2_threshold@iou30"] == 0.0
    at = metric("max_box_acc", cam_threshold=0.51, iou_thresholds=[70])
    at.update([{"score_maps": maps}], [target([[0, 0, 4, 4]], [1])])
    assert at.compute()["gt_known_loc"] == 1.0  # IoU 0.5 at 0.51: correct at the 0.5 rule
    at.update([{"score_maps": maps}], [target([[0, 0, 2, 4]], [1])])  # IoU 1 at >= 0.51, 1/2 at 0.50
    assert at.compute()["gt_known_loc"] == 1.0 and at.compute()["max_box_acc_v2"] == 0.5


def test_constant_and_empty_maps_give_the_box_of_pixel_zero():
    flat = torch.full((2, 6, 6), 3.0)
    m = metric("max_box_acc")
    m.update([{"score_maps": flat}] * 2, [target([[0, 0, 1, 1]], [1]), target([[0, 0, 2, 2]], [1])])
    out = m.compute()
    assert out["max_box_acc"] == 0.5  # IoU 1 with [0, 0, 1, 1], 1/4 with [0, 0, 2, 2]
    assert out["max_box_acc_v2@iou30"] == 0.5 and out["max_box_acc_v2"] == pytest.approx(0.5)


def test_top1_loc_needs_the_right_top1_class_and_one_label():
    maps = maps_of(3, 8, 8, {1: [(slice(2, 5), slice(2, 5), 1.0)]})
    labels = torch.tensor([0.0, 1.0, 0.0])
    m = metric("max_box_acc", background=0)
    good, wrong = torch.tensor([9.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0])  # background never top-1
    m.update([{"score_maps": maps, "scores": good}, {"score_maps": maps, "scores": wrong}],
             [target([[2, 2, 5, 5]], [1], labels=labels)] * 2)
    out = m.compute()
    assert out["gt_known_loc"] == 1.0 and out["top1_loc"] == 0.5
    multi = metric("max_box_acc", background=0)
    multi.update([{"score_maps": maps, "scores": good}],
                 [target([[2, 2, 5, 5], [6, 6, 8, 8]], [1, 2], labels=torch.tensor([0.0, 1.0, 1.0]))])
    assert "top1_loc" not in multi.compute() and multi.compute()["max_box_acc"] == 0.5


def test_background_and_difficult_only_classes_are_not_samples():
    maps = maps_of(3, 8, 8, {1: [(slice(2, 5), slice(2, 5), 1.0)]})
    m = metric("max_box_acc", background=0)
    m.update([{"score_maps": maps}], [target([[0, 0, 8, 8], [2, 2, 5, 5], [0, 0, 2, 2]], [0, 1, 2],
                                             labels_ignore=torch.tensor([False, False, True]))])
    assert int(m.samples) == 1 and m.compute()["max_box_acc"] == 1.0


def reference_box_acc(maps, targets, interval=0.01, ious=(30, 50, 70)):
    """Per sample and threshold: ndimage.label, boxes, IoU with the +1 convention on inclusive boxes."""
    grid = np.arange(0, 1, interval)
    largest = np.zeros((len(grid), len(ious)))
    every = np.zeros((len(grid), len(ious)))
    n = 0
    for m, t in zip(maps, targets):
        for c in sorted(set(t["classes"].tolist())):
            gt = t["boxes"][t["classes"] == c].numpy().astype(np.float64)
            gt[:, 2:] -= 1  # continuous -> inclusive
            s = m[c].numpy().astype(np.float32)
            s = s - s.min()
            s = s / s.max() if s.max() > 0 else np.zeros_like(s)
            q = (s * np.float32(255)).astype(np.uint8)
            n += 1
            for k, thr in enumerate(grid):
                labels, count = ndimage.label(q > int(thr * q.max()), np.ones((3, 3), bool))
                if count == 0:
                    boxes, sizes = np.zeros((1, 4)), np.ones(1)
                else:
                    sizes = np.bincount(labels.ravel())[1:]
                    boxes = np.array([[o[1].start, o[0].start, o[1].stop - 1, o[0].stop - 1]
                                      for o in ndimage.find_objects(labels)], dtype=np.float64)
                w = np.minimum(boxes[:, None, 2], gt[None, :, 2]) - np.maximum(boxes[:, None, 0], gt[None, :, 0]) + 1
                h = np.minimum(boxes[:, None, 3], gt[None, :, 3]) - np.maximum(boxes[:, None, 1], gt[None, :, 1]) + 1
                inter = np.clip(w, 0, None) * np.clip(h, 0, None)
                area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)  # noqa: E731
                iou = (inter / (area(boxes)[:, None] + area(gt)[None] - inter)).max(1)
                for j, cut in enumerate(ious):
                    largest[k, j] += iou[int(np.argmax(sizes))] >= cut / 100
                    every[k, j] += iou.max() >= cut / 100
    return largest / n, every / n


def smooth_maps(count, c, size, generator):
    return [F.interpolate(torch.rand(1, c, 4, 4, generator=generator), size=(size, size), mode="bilinear",
                          align_corners=False)[0] for _ in range(count)]


def random_targets(count, c, size, generator):
    out = []
    for _ in range(count):
        xy = torch.randint(0, size - 8, (2, 2), generator=generator).float()
        wh = torch.randint(4, 9, (2, 2), generator=generator).float()
        boxes = torch.cat([xy, xy + wh], 1)
        out.append(target(boxes.tolist(), torch.randint(1, c, (2,), generator=generator).tolist()))
    return out


def test_max_box_acc_equals_a_per_threshold_reference():
    g = torch.Generator().manual_seed(1)
    maps, targets = smooth_maps(12, 4, 24, g), random_targets(12, 4, 24, g)
    m = metric("max_box_acc", background=0)
    for lo in range(0, 12, 4):
        m.update([{"score_maps": x} for x in maps[lo:lo + 4]], targets[lo:lo + 4])
    largest, every = reference_box_acc(maps, targets)
    out = m.compute()
    assert out["max_box_acc"] == largest[:, 1].max()
    assert out["max_box_acc_threshold"] == np.arange(0, 1, 0.01)[largest[:, 1].argmax()]
    for j, iou in enumerate((30, 50, 70)):
        assert out[f"max_box_acc_v2@iou{iou}"] == every[:, j].max()
    assert out["max_box_acc_v2"] == pytest.approx(every.max(0).mean(), abs=1e-15)


@pytest.mark.parametrize("options, match", [
    ({"cam_curve_interval": 0}, "cam_curve_interval must be a number in \\(0, 1\\)"),
    ({"cam_curve_interval": 1}, "cam_curve_interval"),
    ({"cam_curve_interval": -0.1}, "cam_curve_interval"),
    ({"iou_thresholds": [0, 50]}, "iou_thresholds must be a non-empty list of percents in \\(0, 100\\]"),
    ({"iou_thresholds": [101]}, "iou_thresholds"),
    ({"iou_thresholds": []}, "iou_thresholds"),
    ({"cam_threshold": 1.5}, "cam_threshold must be a number in \\[0, 1\\]"),
])
def test_bad_options_are_one_line_errors(options, match):
    with pytest.raises(ConfigError, match="metric 'max_box_acc': " + match):
        metric("max_box_acc", **options)


@pytest.mark.parametrize("name", ["max_box_acc", "pxap", "pointing_game"])
def test_nan_maps_and_maps_of_another_size_are_refused(name):
    t = target([[0, 0, 2, 2]], [1], mask=torch.ones(4, 4, dtype=torch.int64))
    bad = torch.zeros(2, 4, 4)
    bad[1, 0, 0] = float("nan")
    with pytest.raises(DataError, match=f"metric '{name}': score_maps contain NaN"):
        metric(name).update([{"score_maps": bad}], [t])
    with pytest.raises(DataError, match=f"metric '{name}': score_maps of image 0 are \\(5, 4\\) but the image is"):
        metric(name).update([{"score_maps": torch.zeros(2, 5, 4)}], [t])


# ---- pxap --------------------------------------------------------------------------------------------------

def test_pxap_by_hand_with_void_background_and_other_classes():
    # class 1 scores 1, .75, .5, 0 (and .9 on a void pixel); its pixels are the 1st and 3rd
    maps = torch.zeros(3, 1, 5)
    maps[1, 0] = torch.tensor([1.0, 0.75, 0.5, 0.0, 0.9])
    mask = torch.tensor([[1, 2, 1, 0, 255]])
    m = metric("pxap", background=0, bins=4)
    m.update([{"score_maps": maps}], [{"mask": mask}])
    out = m.compute()
    # class 1: ranks fg(1.0) bg(.75) fg(.5) bg(0): AP = .5 * 1 + .5 * 2/3; class 2 (map all 0): precision 1/4
    # pooled: fg scores 1, .5 (class 1) and 0 (class 2); bg .75, 0 (class 1), 0, 0, 0 (class 2)
    expected = average_precision_score([1, 0, 1, 0, 1, 0, 0, 0], [1, .75, .5, 0, 0, 0, 0, 0])
    assert out["pxap"] == pytest.approx(expected, abs=1e-12)
    assert out["pxap@best_iou"] == pytest.approx(2 / 4)  # >= .5: tp 2, fp 1, 3 fg -> 2/4
    single = metric("pxap", background=0, bins=4)
    single.update([{"score_maps": maps}], [{"mask": torch.tensor([[1, 0, 1, 0, 255]])}])
    assert single.compute()["pxap"] == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert single.compute()["pxap@best_iou"] == pytest.approx(2 / 3)


def pxap_data(count, generator, bins=None, c=4, h=12, w=16):
    maps, targets, y_true, y_score = [], [], [], []
    for _ in range(count):
        m = F.interpolate(torch.rand(1, c, 3, 4, generator=generator), size=(h, w), mode="bilinear")[0]
        if bins:  # on the grid: min 0, max 1, multiples of 1 / bins
            m = torch.round(m * bins) / bins
            m[:, 0, 0], m[:, 0, 1] = 0.0, 1.0
        mask = torch.randint(0, c, (h, w), generator=generator)
        mask[0, 2] = 255
        maps.append(m)
        targets.append({"mask": mask})
        for k in mask.unique().tolist():
            if k in (0, 255):
                continue
            valid = mask != 255
            y_true.append((mask[valid] == k).numpy())
            y_score.append(normalise(m[k], "t")[valid.numpy()])
    return maps, targets, np.concatenate(y_true), np.concatenate(y_score)


def test_pxap_equals_sklearn_on_the_bin_grid_and_is_close_off_it():
    g = torch.Generator().manual_seed(2)
    maps, targets, y_true, y_score = pxap_data(10, g, bins=256)
    m = metric("pxap", background=0, bins=256)
    m.update([{"score_maps": x} for x in maps], targets)
    assert m.compute()["pxap"] == pytest.approx(average_precision_score(y_true, y_score), abs=1e-9)
    maps, targets, y_true, y_score = pxap_data(10, g)
    m = metric("pxap", background=0, bins=1000)
    m.update([{"score_maps": x} for x in maps], targets)
    # off the grid, scores in one bin tie: within 2e-3 of the exact AP here (docs/metrics.md)
    assert abs(m.compute()["pxap"] - average_precision_score(y_true, y_score)) < 2e-3


def test_pxap_refuses_mask_values_that_are_no_class():
    with pytest.raises(DataError, match="metric 'pxap': mask value 7 is outside 0..2"):
        metric("pxap").update([{"score_maps": torch.rand(3, 2, 2)}], [{"mask": torch.tensor([[7, 0], [1, 1]])}])
    with pytest.raises(ConfigError, match="metric 'pxap': bins must be a positive integer"):
        metric("pxap", bins=0)


# ---- pointing_game -----------------------------------------------------------------------------------------

def peak(c, h, w, k, row, col):
    maps = torch.zeros(c, h, w)
    maps[k, row, col] = 1.0
    return maps


def test_pointing_tolerance_is_strict():
    maps = peak(2, 40, 40, 1, 10, 10)
    cases = [([25, 10, 26, 11], False),  # pixel (10, 25): distance 15 -> not < 15
             ([24, 10, 25, 11], True),   # 14
             ([22, 19, 23, 20], False),  # (19, 22): 81 + 144 = 225
             ([21, 19, 22, 20], True),   # 81 + 121 = 202
             ([0, 0, 40, 40], True)]
    for box, hit in cases:
        m = metric("pointing_game")
        m.update([{"score_maps": maps}], [target([box], [1])])
        assert m.compute()["pointing_game"] == float(hit), box


def test_pointing_mean_per_class_masks_and_skipped_classes():
    m = metric("pointing_game", background=0, tolerance=1)
    a = peak(3, 8, 8, 1, 2, 2)
    a[2, 6, 6] = 1.0
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True  # class 1's instance mask misses the point though its box covers it
    masks[1, 6, 6] = True
    m.update([{"score_maps": a}, {"score_maps": a}, {"score_maps": a}],
             [target([[1, 1, 4, 4]], [1]),
              target([[0, 0, 4, 4], [6, 6, 7, 7]], [1, 2], masks=masks),
              target([[1, 1, 4, 4], [0, 0, 1, 1]], [1, 2], labels_ignore=torch.tensor([False, False, True]))])
    assert m.hits.tolist() == [0, 2, 1] and m.misses.tolist() == [0, 1, 0]
    assert m.compute()["pointing_game"] == pytest.approx((2 / 3 + 1) / 2)
    per = m.per_class()["pointing_game"]
    assert math.isnan(per[0]) and per[1:] == pytest.approx([2 / 3, 1.0])


def test_pointing_difficult_subset_small_class_with_a_distractor():
    m = metric("pointing_game", subset="difficult", tolerance=1)
    maps = peak(3, 10, 10, 1, 1, 1)
    m.update([{"score_maps": maps}] * 3,
             [target([[0, 0, 4, 4], [6, 6, 10, 10]], [1, 2]),  # each 16 % of the image, the other present
              target([[0, 0, 4, 4]], [1]),                      # no distractor: skipped
              target([[0, 0, 5, 5], [5, 5, 10, 10]], [1, 2])])  # each 25 %, not < 1/4: skipped
    assert m.hits.tolist() == [0, 1, 0] and m.misses.tolist() == [0, 0, 1]  # class 2 in image 1 only


# ---- distributed states, end to end ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["max_box_acc", "pxap", "pointing_game"])
def test_summed_halves_equal_one_pass(name):
    from segbench.api import create_dataset

    data = create_dataset("shapes", "val", image_size=32, num_val=6)
    g = torch.Generator().manual_seed(3)
    samples = [data[i] for i in range(len(data))]
    preds = [{"score_maps": torch.rand(len(s["target"]["labels"]), 32, 32, generator=g),
              "scores": torch.rand(len(s["target"]["labels"]), generator=g)} for s in samples]
    targets = [s["target"] for s in samples]
    whole, halves = metric(name, background=0), [metric(name, background=0) for _ in range(2)]
    whole.update(preds, targets)
    halves[0].update(preds[:3], targets[:3])
    halves[1].update(preds[3:], targets[3:])
    merged = metric(name, background=0)
    merged.load_state_tensors(merge_states([h.state_tensors() for h in halves], whole.state_reductions))
    assert merged.compute() == pytest.approx(whole.compute(), nan_ok=True)


def test_cli_run_records_the_wsol_metrics(tmp_path):
    from segbench.engine.config import parse_overrides
    from segbench.engine.run import run_experiment

    overrides = parse_overrides(["steps=2", "image_size=32", "num_train=8", "num_val=4", "batch_size=2"])
    outcome = run_experiment("weldon", "shapes", overrides=overrides, runs=tmp_path, progress=False,
                             metrics=["max_box_acc", "pxap", "pointing_game"])
    record = json.loads(outcome.path.read_text())
    assert {"max_box_acc", "max_box_acc_v2", "max_box_acc_v2@iou50", "gt_known_loc", "pxap", "pxap@best_iou",
            "pointing_game"} <= set(record["metrics"])


def test_pxap_equals_the_reference_histograms_off_the_grid():
    # wsolevaluation MaskEvaluator (evaluation.py:348-416): np.histogram with edges arange(0, 1, 1/bins) + [1, 2, 3]
    g = torch.Generator().manual_seed(4)
    maps, targets, y_true, y_score = pxap_data(8, g)
    edges = np.append(np.arange(0, 1, 1 / 1000), [1.0, 2.0, 3.0])
    fg = np.histogram(y_score[y_true], bins=edges)[0].astype(float)
    bg = np.histogram(y_score[~y_true], bins=edges)[0].astype(float)
    tp, fp = fg[::-1].cumsum(), bg[::-1].cumsum()
    with np.errstate(invalid="ignore", divide="ignore"):
        precision, recall = tp / (tp + fp), tp / fg.sum()
    expected = (precision[1:] * np.diff(recall))[(tp + fp)[1:] != 0].sum()
    m = metric("pxap", background=0, bins=1000)
    m.update([{"score_maps": x} for x in maps], targets)
    assert m.compute()["pxap"] == pytest.approx(expected, abs=1e-12)
    assert m.compute()["pxap@best_iou"] == pytest.approx((tp / (fg.sum() + fp)).max(), abs=1e-12)


def test_pointing_game_equals_torchray_acceptance_regions():
    # TorchRay PointingGame.evaluate (pointing_game.py:76-85): a disc of squared radius < tol**2 around the point
    g = torch.Generator().manual_seed(5)
    for trial in range(30):
        h, w, tol = 20, 24, float(torch.randint(1, 8, (1,), generator=g))
        maps = torch.rand(3, h, w, generator=g)
        masks = torch.rand(2, h, w, generator=g) > 0.97
        t = target([[0, 0, 4, 4], [10, 10, 14, 14]], [1, 2], masks=masks) if trial % 2 else \
            target(torch.randint(0, 12, (2, 2), generator=g).float().repeat(1, 2).add(
                torch.tensor([0.0, 0.0, 6.0, 5.0])).tolist(), [1, 2])
        m = metric("pointing_game", tolerance=tol, background=0)
        m.update([{"score_maps": maps}], [t])
        for k, c in enumerate((1, 2)):
            if trial % 2:
                region = masks[k]
            else:
                region = torch.zeros(h, w, dtype=torch.bool)
                x1, y1, x2, y2 = (int(v) for v in t["boxes"][k])
                region[y1:y2, x1:x2] = True
            row, col = divmod(int(maps[c].flatten().argmax()), w)
            v, u = torch.meshgrid((torch.arange(h) - row) ** 2, (torch.arange(w) - col) ** 2, indexing="ij")
            hit = bool((region & ((v + u) < tol ** 2)).any())
            assert int(m.hits[c]) == int(hit) and int(m.misses[c]) == int(not hit), (trial, c)
