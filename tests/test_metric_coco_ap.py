"""``coco_ap`` and ``segbench coco-eval`` against the COCO API: its own reference results, hand-built
cases, pycocotools run directly on the equivalent JSON files, and every bad-input path."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segbench.api import create_metric
from segbench.cli import main
from segbench.data.export import export_coco
from segbench.data.shapes import ShapesDataset
from segbench.errors import DataError
from segbench.metrics.coco import STAT_NAMES, CocoAP, evaluate, evaluate_files, metric_key, summary_lines

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
COCO_DIR = SHARED / "coco"
REFERENCE_GT = COCO_DIR / "annotations" / "instances_val2014_100.json"
REFERENCE_RESULTS = {t: COCO_DIR / "results" / f"instances_val2014_fake{t}100_results.json" for t in ("bbox", "segm")}
REFERENCE_TXT = COCO_DIR / "results" / "val2014_fake_eval_res.txt"
needs_reference = pytest.mark.skipif(not REFERENCE_TXT.exists(), reason=f"COCO reference data not in {COCO_DIR}")


def segbench(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def printed_numbers(text: str) -> dict[str, list[str]]:
    """``{type: [the twelve numbers as printed]}`` from COCO-style output (``type=segm`` headers)."""
    out, current = {}, None
    for line in text.splitlines():
        header = re.match(r"type=(\w+)", line.strip())
        if header:
            current = header.group(1)
            out[current] = []
        elif current and "] = " in line:
            out[current].append(line.rsplit("= ", 1)[1].strip())
    return out


def direct_cocoeval(gt_path: Path, results: list[dict], iou_type: str) -> COCOeval:
    """pycocotools on files, as its README does, output swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        ev = COCOeval(gt, gt.loadRes(results) if results else _empty(gt), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _empty(gt: COCO) -> COCO:
    res = COCO()
    res.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
    res.createIndex()
    return res


def as_metric_values(stats, iou_type: str) -> dict[str, float]:
    return {metric_key(n, iou_type): (float(v) if v >= 0 else math.nan) for n, v in zip(STAT_NAMES, stats)}


def same(a: dict, b: dict, tol: float = 1e-12) -> bool:
    assert set(a) == set(b)
    return all((math.isnan(a[k]) and math.isnan(b[k])) or abs(a[k] - b[k]) <= tol for k in a)


# -- the COCO API's own reference results ---------------------------------------------------------
def reference_numbers() -> dict[str, list[str]]:
    return printed_numbers(REFERENCE_TXT.read_text())


@needs_reference
@pytest.mark.parametrize("iou_type", ["segm", "bbox"])
def test_coco_eval_prints_the_coco_api_reference_numbers(capsys, iou_type):
    code, out, err = segbench(capsys, "coco-eval", "--gt", REFERENCE_GT, "--results", REFERENCE_RESULTS[iou_type],
                              "--iou-type", iou_type)
    assert code == 0, err
    expected = reference_numbers()[iou_type]
    assert len(expected) == 12
    assert printed_numbers(out) == {iou_type: expected}


@needs_reference
def test_reference_through_the_faster_backend_is_the_same_to_1e6():
    pytest.importorskip("faster_coco_eval")
    for iou_type, path in REFERENCE_RESULTS.items():
        slow = evaluate_files(REFERENCE_GT, path, iou_type, backend="pycocotools")[iou_type]
        fast = evaluate_files(REFERENCE_GT, path, iou_type, backend="faster")[iou_type]
        assert np.abs(slow.stats - fast.stats).max() <= 1e-6
        assert slow.ap.keys() == fast.ap.keys()
        for cat in slow.ap:
            assert np.isclose(slow.ap[cat], fast.ap[cat], atol=1e-6, equal_nan=True)
        assert [f"{v:0.3f}" for v in slow.stats] == reference_numbers()[iou_type]


@needs_reference
def test_summary_lines_are_what_cocoeval_summarize_prints():
    results = json.loads(REFERENCE_RESULTS["bbox"].read_text())
    printed = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()):
        ev = direct_cocoeval(REFERENCE_GT, results, "bbox")
    with contextlib.redirect_stdout(printed):
        ev.summarize()
    assert summary_lines(ev.stats) == printed.getvalue().splitlines()


# -- hand-built cases -----------------------------------------------------------------------------
SIZE = 40


def instance_target(objects: list[tuple[int, int, int, int, int]]) -> dict:
    """A target with rectangles ``(class, x1, y1, x2, y2)`` (pixels x1..x2-1, y1..y2-1)."""
    masks = torch.zeros((len(objects), SIZE, SIZE), dtype=torch.bool)
    for k, (_, x1, y1, x2, y2) in enumerate(objects):
        masks[k, y1:y2, x1:x2] = True
    return {
        "boxes": torch.tensor([o[1:] for o in objects], dtype=torch.float32).reshape(-1, 4),
        "classes": torch.tensor([o[0] for o in objects], dtype=torch.int64),
        "masks": masks,
        "iscrowd": torch.zeros(len(objects), dtype=torch.bool),
    }


def instance_prediction(objects: list[tuple[int, int, int, int, int]], scores: list[float]) -> dict:
    target = instance_target(objects)
    return {"instances": {"boxes": target["boxes"], "classes": target["classes"],
                          "scores": torch.tensor(scores, dtype=torch.float32), "masks": target["masks"]}}


def test_perfect_predictions_give_ap_1():
    objects = [[(1, 2, 2, 12, 10), (1, 20, 20, 35, 30)], [(2, 5, 5, 25, 25)]]
    metric = create_metric("coco_ap", num_classes=3, background=0)
    metric.update([instance_prediction(o, [0.9] * len(o)) for o in objects], [instance_target(o) for o in objects])
    values = metric.compute()
    for t in ("bbox", "segm"):
        for stat in ("ap", "ap50", "ap75", "aps", "ar10", "ar100", "ars"):
            assert values[metric_key(stat, t)] == pytest.approx(1.0, abs=1e-12)
        assert math.isnan(values[metric_key("apm", t)]) and math.isnan(values[metric_key("apl", t)])  # all small
    # maxDets counts per image and class: 1 detection finds 1 of class 1's 2 objects in image 0
    assert values["coco_ar1_segm"] == pytest.approx((1 / 2 + 1) / 2, abs=1e-12)
    assert set(values) == {metric_key(s, t) for s in STAT_NAMES for t in ("bbox", "segm")}
    per_class = metric.per_class()
    assert math.isnan(per_class["coco_ap_segm"][0]) and per_class["coco_ap_segm"][1:] == pytest.approx([1.0, 1.0])


def test_one_missing_detection():
    # one class, two objects, one found: precision 1 up to recall 0.5, so 51 of COCO's 101 recall points
    gt = [(1, 2, 2, 12, 12), (1, 20, 20, 30, 30)]
    metric = create_metric("coco_ap", num_classes=2, background=0)
    metric.update([instance_prediction(gt[:1], [0.8])], [instance_target(gt)])
    values = metric.compute()
    for t in ("bbox", "segm"):
        assert values[metric_key("ap", t)] == pytest.approx(51 / 101, abs=1e-12)
        assert values[metric_key("ap50", t)] == pytest.approx(51 / 101, abs=1e-12)
        assert values[metric_key("ar100", t)] == pytest.approx(0.5, abs=1e-12)


def test_a_wrong_class_is_a_miss_and_a_false_positive():
    # object of class 1 predicted as class 2; class 3 found: AP(1) = 0, class 2 has no ground truth
    # (left out of the mean), AP(3) = 1 -> mean 0.5
    gt = [(1, 2, 2, 14, 14), (3, 20, 20, 34, 34)]
    predicted = [(2, 2, 2, 14, 14), (3, 20, 20, 34, 34)]
    metric = create_metric("coco_ap", num_classes=4, background=0)
    metric.update([instance_prediction(predicted, [0.9, 0.7])], [instance_target(gt)])
    values = metric.compute()
    assert values["coco_ap_segm"] == pytest.approx(0.5, abs=1e-12)
    assert values["coco_ap_bbox"] == pytest.approx(0.5, abs=1e-12)
    row = metric.per_class()["coco_ap_bbox"]
    assert math.isnan(row[0]) and row[1] == 0.0 and math.isnan(row[2]) and row[3] == pytest.approx(1.0)


def test_float_masks_are_thresholded_at_one_half():
    gt = [(1, 2, 2, 22, 22)]
    probabilities = torch.zeros((1, SIZE, SIZE))
    probabilities[0, 2:22, 2:22] = 0.51
    probabilities[0, 22:30, 2:22] = 0.5  # not above 0.5: not in the mask
    prediction = {"instances": {"boxes": torch.tensor([[2.0, 2, 22, 22]]), "classes": torch.tensor([1]),
                                "scores": torch.tensor([0.9]), "masks": probabilities}}
    metric = create_metric("coco_ap", num_classes=2, background=0, iou_types="segm")
    metric.update([prediction], [instance_target(gt)])
    assert metric.compute() == pytest.approx({metric_key(s, "segm"): v for s, v in zip(
        STAT_NAMES, [1, 1, 1, 1, math.nan, math.nan, 1, 1, 1, 1, math.nan, math.nan])}, nan_ok=True)
    assert metric.results()[0]["segmentation"]["counts"] == mask_utils.encode(
        np.asfortranarray(instance_target(gt)["masks"][0].numpy()[:, :, None].astype(np.uint8)))[0]["counts"].decode()


def test_box_only_predictions_give_bbox_keys():
    gt = [(1, 2, 2, 12, 12)]
    prediction = instance_prediction(gt, [0.9])
    del prediction["instances"]["masks"]
    metric = create_metric("coco_ap", num_classes=2, background=0)
    metric.update([prediction], [instance_target(gt)])
    values = metric.compute()
    assert set(values) == {metric_key(s, "bbox") for s in STAT_NAMES} and values["coco_ap_bbox"] == pytest.approx(1.0)


def test_nothing_seen_gives_nan():
    values = create_metric("coco_ap", num_classes=2, background=0).compute()
    assert len(values) == 24 and all(math.isnan(v) for v in values.values())


# -- the metric path against pycocotools on the equivalent files ----------------------------------
@pytest.fixture(scope="module")
def shapes_case(tmp_path_factory):
    """Shapes targets, noisy instance predictions, the GT exported with export_coco and the results
    written by hand (pycocotools' encoder): the same evaluation as files."""
    dataset = ShapesDataset("val", num_val=10, image_size=64, max_objects=5)
    targets = [dataset[i]["target"] for i in range(len(dataset))]
    out = tmp_path_factory.mktemp("coco")
    gt_path = [p for p in export_coco(dataset, out, "val") if p.suffix == ".json" and "instances" in p.name][0]
    g = torch.Generator().manual_seed(0)
    predictions, results = [], []
    for index, t in enumerate(targets):
        boxes, classes, scores, masks = [], [], [], []
        for k in range(len(t["classes"])):
            if torch.rand(1, generator=g) < 0.2:
                continue  # a miss
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
            masks.append(torch.roll(t["masks"][k], (dy, dx), (0, 1)))
            boxes.append(t["boxes"][k] + torch.tensor([dx, dy, dx, dy]))
            classes.append(int(t["classes"][k]) if torch.rand(1, generator=g) > 0.1 else 1 + int(t["classes"][k]) % 6)
            scores.append(float(torch.rand(1, generator=g)))
        for _ in range(int(torch.randint(0, 3, (1,), generator=g))):  # false positives
            x, y = (int(v) for v in torch.randint(0, 48, (2,), generator=g))
            m = torch.zeros((64, 64), dtype=torch.bool)
            m[y:y + 12, x:x + 10] = True
            masks.append(m)
            boxes.append(torch.tensor([x, y, x + 10, y + 12], dtype=torch.float32))
            classes.append(int(torch.randint(1, 7, (1,), generator=g)))
            scores.append(round(float(torch.rand(1, generator=g)), 1))  # ties too
        masks_t = torch.stack(masks) if masks else torch.zeros((0, 64, 64), dtype=torch.bool)
        if index % 2:  # probabilities on odd images
            masks_t = masks_t.float() * 0.6 + 0.2
        predictions.append({"instances": {
            "boxes": torch.stack(boxes) if boxes else torch.zeros((0, 4)),
            "classes": torch.tensor(classes, dtype=torch.int64), "scores": torch.tensor(scores),
            "masks": masks_t}})
        for box, c, s, m in zip(boxes, classes, scores, masks):
            x1, y1, x2, y2 = (float(v) for v in box)
            rle = mask_utils.encode(np.asfortranarray(m.numpy().astype(np.uint8)))
            results.append({"image_id": index + 1, "category_id": c, "score": float(torch.tensor(s)),
                            "bbox": [x1, y1, x2 - x1, y2 - y1],
                            "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode()}})
    return gt_path, targets, predictions, results


def fed(predictions, targets, **options) -> CocoAP:
    metric = create_metric("coco_ap", num_classes=7, background=0, **options)
    metric.update(predictions[:4], targets[:4])
    metric.update(predictions[4:], targets[4:])
    return metric


def direct_values(gt_path, results) -> dict[str, float]:
    expected = {}
    for t, key in (("bbox", "bbox"), ("segm", "segmentation")):
        only = [{k: r[k] for k in ("image_id", "category_id", "score", key)} for r in results]
        expected.update(as_metric_values(direct_cocoeval(gt_path, only, t).stats, t))
    return expected


def test_metric_equals_pycocotools_on_the_equivalent_files(shapes_case):
    gt_path, targets, predictions, results = shapes_case
    metric = fed(predictions, targets)
    values = metric.compute()
    expected = direct_values(gt_path, results)
    assert same(values, expected)
    # a case that exercises misses, false positives and ties
    assert 0.05 < values["coco_ap_segm"] < values["coco_ap50_segm"] < 0.95
    # per class: the precision array of the same direct run
    ev = direct_cocoeval(gt_path, [{k: r[k] for k in ("image_id", "category_id", "score", "bbox")}
                                   for r in results], "bbox")
    precision = ev.eval["precision"][:, :, :, 0, -1]
    direct = [float(precision[:, :, k][precision[:, :, k] > -1].mean()) for k in range(6)]
    assert metric.per_class()["coco_ap_bbox"][1:] == pytest.approx(direct, abs=1e-12)
    assert math.isnan(metric.per_class()["coco_ap_bbox"][0])


def test_saved_predictions_score_the_same_through_coco_eval(shapes_case, tmp_path, capsys):
    gt_path, targets, predictions, results = shapes_case
    metric = fed(predictions, targets)
    path = metric.save_predictions(tmp_path / "res.json")
    saved = json.loads(path.read_text())
    assert [(r["image_id"], r["category_id"]) for r in saved] == [(r["image_id"], r["category_id"]) for r in results]
    assert [r["segmentation"] for r in saved] == [r["segmentation"] for r in results]
    code, out, err = segbench(capsys, "coco-eval", "--gt", gt_path, "--results", path, "--iou-type", "both")
    assert code == 0, err
    values = metric.compute()
    printed = printed_numbers(out)
    for t in ("bbox", "segm"):
        expected = [f"{values[metric_key(s, t)] if not math.isnan(values[metric_key(s, t)]) else -1:0.3f}"
                    for s in STAT_NAMES]
        assert printed[t] == expected


def test_faster_backend_gives_the_same_numbers(shapes_case):
    pytest.importorskip("faster_coco_eval")
    gt_path, targets, predictions, results = shapes_case
    slow, fast = fed(predictions, targets), fed(predictions, targets, backend="faster")
    assert same(slow.compute(), fast.compute(), tol=1e-6)
    for key, row in slow.per_class().items():
        assert np.allclose(row, fast.per_class()[key], atol=1e-6, equal_nan=True)


def test_ground_truth_from_the_annotation_file(shapes_case):
    gt_path, targets, predictions, results = shapes_case
    from_targets = fed(predictions, targets).compute()
    bare = [{"labels": t["labels"]} for t in targets]  # the file is the ground truth: no instance targets needed
    assert same(fed(predictions, bare, annotation_file=str(gt_path)).compute(), from_targets)
    with_ids = [{**t, "image_id": i + 1} for i, t in enumerate(targets)]
    reordered = fed(predictions[::-1], with_ids[::-1], annotation_file=str(gt_path))
    assert same(reordered.compute(), from_targets)


def test_merged_states_give_the_numbers_of_one_pass(shapes_case):
    gt_path, targets, predictions, results = shapes_case
    one = fed(predictions, targets).compute()
    ranks = [create_metric("coco_ap", num_classes=7, background=0) for _ in range(2)]
    ranks[0].update(predictions[:3], targets[:3])
    ranks[1].update(predictions[3:], targets[3:])
    assert set(CocoAP.state_reductions.values()) == {"cat"}
    gathered = {k: torch.cat([r.state_tensors()[k] for r in ranks]) for k in CocoAP.state_reductions}
    merged = create_metric("coco_ap", num_classes=7, background=0)
    merged.load_state_tensors(gathered)
    assert same(merged.compute(), one)


def test_evaluate_takes_a_list_and_leaves_it_alone(shapes_case):
    gt_path, targets, predictions, results = shapes_case
    before = json.dumps(results)
    out = evaluate(json.loads(Path(gt_path).read_text()), results, ("bbox", "segm"))
    assert json.dumps(results) == before
    assert same({**out["bbox"].as_dict(), **out["segm"].as_dict()}, direct_values(gt_path, results))


# -- bad input ------------------------------------------------------------------------------------
@pytest.fixture
def small_files(tmp_path):
    """A two-image ground truth and a valid results list."""
    metric = create_metric("coco_ap", num_classes=3, background=0)
    objects = [[(1, 2, 2, 12, 10), (2, 20, 20, 35, 30)], [(1, 5, 5, 25, 25)]]
    metric.update([instance_prediction(o, [0.9] * len(o)) for o in objects], [instance_target(o) for o in objects])
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(metric.ground_truth()))
    return gt, metric.results()


def write(path: Path, results) -> Path:
    path.write_text(json.dumps(results))
    return path


def one_line_error(capsys, *args) -> str:
    code, out, err = segbench(capsys, "coco-eval", *args)
    assert code == 2 and out == ""
    assert err.startswith("Error: ") and err.strip().count("\n") == 0, err
    return err


def test_valid_small_files_score_1(small_files, tmp_path, capsys):
    gt, results = small_files
    code, out, err = segbench(capsys, "coco-eval", "--gt", gt, "--results", write(tmp_path / "r.json", results))
    assert code == 0 and printed_numbers(out)["bbox"][0] == "1.000" and printed_numbers(out)["segm"][0] == "1.000"


def test_unknown_image_id(small_files, tmp_path, capsys):
    gt, results = small_files
    results[1]["image_id"] = 999
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", results))
    assert "res.json: result 1 (image_id 999, category_id 2)" in err and "not in" in err and "gt.json" in err


def test_unknown_category_id(small_files, tmp_path, capsys):
    gt, results = small_files
    results[2]["category_id"] = 77
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", results))
    assert "result 2 (image_id 2, category_id 77) has a category_id that is not in" in err


def test_box_with_negative_size(small_files, tmp_path, capsys):
    gt, results = small_files
    results[0]["bbox"] = [10.0, 10.0, -3.0, 4.0]
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", results),
                         "--iou-type", "bbox")
    assert "res.json: result 0 (image_id 1, category_id 1) has a box with negative size" in err


def test_mask_of_the_wrong_size(small_files, tmp_path, capsys):
    gt, results = small_files
    results[1]["segmentation"] = {"size": [10, 10], "counts": mask_utils.encode(
        np.asfortranarray(np.ones((10, 10, 1), dtype=np.uint8)))[0]["counts"].decode()}
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", results),
                         "--iou-type", "segm")
    assert "result 1 (image_id 1, category_id 2) has a mask of size 10x10 but its image is 40x40" in err


def test_missing_field_and_missing_type(small_files, tmp_path, capsys):
    gt, results = small_files
    del results[2]["score"]
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", results))
    assert "result 2 (image_id 2, category_id 1) lacks score" in err
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in small_files[1]]
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "b.json", boxes_only), "--iou-type", "segm")
    assert "result 0 (image_id 1, category_id 1) lacks segmentation" in err


def test_ground_truth_that_is_not_coco_json(small_files, tmp_path, capsys):
    gt, results = small_files
    res = write(tmp_path / "res.json", results)
    not_json = tmp_path / "notes.json"
    not_json.write_text("images: none\n")
    err = one_line_error(capsys, "--gt", not_json, "--results", res)
    assert f"COCO ground truth {not_json} is not JSON" in err
    a_list = write(tmp_path / "list.json", [1, 2])
    err = one_line_error(capsys, "--gt", a_list, "--results", res)
    assert f"{a_list} is not COCO ground truth" in err
    doc = json.loads(gt.read_text())
    doc["annotations"][1]["image_id"] = 5
    err = one_line_error(capsys, "--gt", write(tmp_path / "bad.json", doc), "--results", res)
    assert "bad.json: annotation 1 (id 2) has image_id 5, which is not in 'images'" in err


def test_results_that_are_not_a_list(small_files, tmp_path, capsys):
    gt, _ = small_files
    err = one_line_error(capsys, "--gt", gt, "--results", write(tmp_path / "res.json", {"annotations": []}))
    assert "res.json is not a COCO results file" in err


def test_metric_rejects_masks_of_the_wrong_size_and_the_background():
    gt = [(1, 2, 2, 12, 12)]
    prediction = instance_prediction(gt, [0.9])
    prediction["instances"]["masks"] = torch.zeros((1, 20, 20), dtype=torch.bool)
    metric = create_metric("coco_ap", num_classes=2, background=0)
    with pytest.raises(DataError, match="masks of size 20x20 but the image is 40x40"):
        metric.update([prediction], [instance_target(gt)])
    with pytest.raises(DataError, match="class 0, which is the background"):
        metric.update([instance_prediction([(0, 2, 2, 12, 12)], [0.9])], [instance_target(gt)])
    upside_down = instance_prediction([(1, 12, 2, 2, 12)], [0.9])
    upside_down["instances"]["masks"] = instance_target(gt)["masks"]
    with pytest.raises(DataError, match=r"box 0 \[12.0, 2.0, 2.0, 12.0\] is not XYXY"):
        metric.update([upside_down], [instance_target(gt)])


def test_reset_forgets_and_update_after_compute_counts():
    gt = [(1, 2, 2, 12, 12), (1, 20, 20, 30, 30)]
    metric = create_metric("coco_ap", num_classes=2, background=0)
    metric.update([instance_prediction(gt[:1], [0.8])], [instance_target(gt)])
    assert metric.compute()["coco_ap_bbox"] == pytest.approx(51 / 101)
    metric.update([instance_prediction(gt, [0.8, 0.7])], [instance_target(gt)])  # 3 of 4 found
    assert metric.per_class()["coco_ap_bbox"][1] == pytest.approx(
        metric.compute()["coco_ap_bbox"])
    assert metric.compute()["coco_ar100_bbox"] == pytest.approx(0.75)
    metric.reset()
    assert math.isnan(metric.compute()["coco_ap_bbox"]) and metric.per_class() == {}


@pytest.mark.skipif(not (COCO_DIR / "annotations" / "instances_val2017.json").exists(), reason="no COCO sample")
def test_real_coco_sample_through_the_dataset_file_and_through_its_targets():
    pytest.importorskip("segbench.data.coco")
    dataset = pytest.importorskip("segbench.api").create_dataset("coco", "val", root=str(COCO_DIR))
    samples = [dataset[i] for i in range(len(dataset))]
    predictions = []
    for s in samples:  # every non-crowd object found, in a score order unrelated to the file's
        t, keep = s["target"], ~s["target"]["iscrowd"]
        n = int(keep.sum())
        predictions.append({"instances": {"boxes": t["boxes"][keep], "classes": t["classes"][keep],
                                          "scores": torch.linspace(0.9, 0.5, n) if n else torch.zeros(0),
                                          "masks": t["masks"][keep]}})
    targets = [s["target"] for s in samples]
    from_file = create_metric("coco_ap", num_classes=len(dataset.classes), background=0,
                              annotation_file=str(dataset.annotation_file), category_ids=dataset.category_ids)
    from_targets = create_metric("coco_ap", num_classes=len(dataset.classes), background=0)
    for metric in (from_file, from_targets):
        metric.update(predictions, targets)
    a, b = from_file.compute(), from_targets.compute()
    assert a["coco_ap_segm"] == pytest.approx(1.0) and a["coco_ap_bbox"] == pytest.approx(1.0)
    # the file's own areas (not the masks' pixel counts) only move objects between small/medium/large
    for key in ("ap", "ap50", "ap75", "ar1", "ar10", "ar100"):
        for t in ("segm", "bbox"):
            assert a[metric_key(key, t)] == pytest.approx(b[metric_key(key, t)], abs=1e-12)
    results = from_file.results()
    assert {r["image_id"] for r in results} <= {s["target"]["image_id"] for s in samples}
    assert {r["category_id"] for r in results} <= {c for c in dataset.category_ids if c is not None}
