"""COCO loader on the genuine files in ../shared/data, on shapes exports and on hand-made instance files.

Independent references: pycocotools (annToMask, COCOeval on the dataset's own
annotation file), and hand-drawn overlaps for the semantic-mask rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO as PyCOCO

from segbench.data.builtin import ARCHIVES, COCO_CLASSES, SHAPES_CLASSES
from segbench.data.checks import validate
from segbench.data.coco import COCO, CocoDataset, semantic_from_rles, semantic_mask
from segbench.data.export import export_coco
from segbench.data.shapes import ShapesDataset
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
COCO_ROOT = SHARED / "coco"
needs_coco = pytest.mark.skipif(not (COCO_ROOT / "val2017").is_dir(), reason="no ../shared/data COCO sample")


@pytest.fixture(scope="module")
def val():
    return COCO(COCO_ROOT, "val")


@pytest.fixture(scope="module")
def samples(val):
    return [val[i] for i in range(len(val))]


def test_spec_carries_the_80_categories_and_archives():
    spec = get_registry().dataset("coco")
    assert spec.classes == COCO_CLASSES and len(spec.classes) == 81 and spec.background == 0
    assert spec.options["year"] == 2017 and spec.splits == ("train", "val")
    assert {"labels", "mask", "boxes", "classes", "masks", "iscrowd"} <= spec.annotations
    assert "Lin" in spec.citation and spec.url.startswith("https://cocodataset.org")
    assert [a["md5"] for a in ARCHIVES["coco2017"]] == [
        "cced6f7f71b7629ddf16f17bbcfab6b2", "442b8da7639aecaf257c1dceb8ba8c80", "f4bbac642086de4f52a3fdda2de5fa2c"]


# -- genuine files --------------------------------------------------------------------------------------------
@needs_coco
def test_real_val2017_matches_pycocotools(val, samples):
    reference = PyCOCO(str(COCO_ROOT / "annotations" / "instances_val2017.json"))
    assert val.image_ids == sorted(reference.getImgIds()) and len(val) == 37
    crowd_total = empty = 0
    for i, sample in enumerate(samples):
        image_id = val.image_ids[i]
        info = reference.imgs[image_id]
        anns = reference.loadAnns(reference.getAnnIds(imgIds=[image_id]))
        target, meta = sample["target"], sample["meta"]
        assert tuple(sample["image"].shape) == (3, info["height"], info["width"])
        assert meta["orig_size"] == (info["height"], info["width"]) and meta["image_id"] == image_id
        assert target["image_id"] == image_id and meta["path"].endswith(info["file_name"])
        assert target["classes"].tolist() == [val.category_to_class[a["category_id"]] for a in anns]
        assert [val.category_ids[c] for c in target["classes"].tolist()] == [a["category_id"] for a in anns]
        x, y, w, h = (np.asarray([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4).T)
        assert np.allclose(target["boxes"].numpy(), np.stack([x, y, x + w, y + h], 1))
        expected = [reference.annToMask(a).astype(bool) for a in anns]
        expected = np.stack(expected) if anns else np.zeros((0, info["height"], info["width"]), dtype=bool)
        assert np.array_equal(target["masks"].numpy(), expected)
        empty += not anns
        assert target["iscrowd"].tolist() == [bool(a["iscrowd"]) for a in anns]
        crowd_total += int(target["iscrowd"].sum())
        labels = torch.zeros(81)
        labels[target["classes"]] = 1
        assert torch.equal(target["labels"], labels) and target["labels"][0] == 0
    assert crowd_total == 5  # SOURCES.md: 5 iscrowd annotations (uncompressed RLE) in val2017
    assert empty == 37 - len({a["image_id"] for a in reference.dataset["annotations"]})


@needs_coco
def test_category_mapping_writes_back_a_results_file_that_cocoeval_scores_perfect(val, samples, tmp_path):
    """Ground-truth boxes written as detections through class_to_category score AP 1 on the dataset's own file."""
    from pycocotools.cocoeval import COCOeval

    assert val.category_ids[0] is None and val.category_ids[1] == 1 and val.class_to_category[80] == 90
    assert val.category_to_class[90] == 80 and val.classes[80] == "toothbrush"
    results = []
    for sample in samples:
        target = sample["target"]
        for box, c, crowd in zip(target["boxes"].tolist(), target["classes"].tolist(), target["iscrowd"].tolist()):
            if not crowd:
                x1, y1, x2, y2 = box
                results.append({"image_id": target["image_id"], "category_id": val.class_to_category[c],
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "score": 1.0})
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    gt = PyCOCO(str(val.annotation_file))
    evaluation = COCOeval(gt, gt.loadRes(str(path)), "bbox")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0) and evaluation.stats[1] == pytest.approx(1.0)


@needs_coco
def test_semantic_mask_rule_on_real_images(samples):
    """Every pixel: one class of non-crowd instances -> it; two classes -> 255; crowd only -> 255; else 0."""
    for sample in samples:
        target = sample["target"]
        masks, classes, crowd = target["masks"].numpy(), target["classes"].numpy(), target["iscrowd"].numpy()
        covered = {}
        for m, c, is_crowd in zip(masks, classes, crowd):
            if not is_crowd:
                covered[c] = covered.get(c, False) | m
        expected = np.zeros(target["mask"].shape, dtype=np.int64)
        count = np.zeros(target["mask"].shape, dtype=np.int64)
        for c, m in covered.items():
            expected[m] = c
            count += m
        expected[count > 1] = 255
        if crowd.any():
            expected[masks[crowd].any(0) & (count == 0)] = 255
        assert np.array_equal(target["mask"].numpy(), expected), sample["meta"]["image_id"]


@needs_coco
def test_target_selection_skips_the_costly_masks_and_keeps_the_same_semantic_mask(samples):
    light = COCO(COCO_ROOT, "val").select_targets({"labels", "mask"})
    for i in range(len(light)):
        full, part = samples[i]["target"], light[i]["target"]
        assert "masks" not in part and torch.equal(full["mask"], part["mask"])
        assert torch.equal(full["boxes"], part["boxes"]) and torch.equal(full["labels"], part["labels"])
    light.select_targets({"labels"})
    assert "mask" not in light[0]["target"]


@needs_coco
def test_2014_layout_with_year_option(tmp_path):
    doc = json.loads((COCO_ROOT / "annotations" / "instances_val2017.json").read_text())
    doc["images"] = doc["images"][:3]
    (tmp_path / "annotations").mkdir()
    (tmp_path / "val2014").mkdir()
    for image in doc["images"]:
        name = f"COCO_val2014_{image['id']:012d}.jpg"
        (tmp_path / "val2014" / name).symlink_to(COCO_ROOT / "val2017" / image["file_name"])
        image["file_name"] = name
    (tmp_path / "annotations" / "instances_val2014.json").write_text(json.dumps(doc))
    from segbench.api import create_dataset

    dataset = create_dataset("coco", "val", root=tmp_path, year=2014)
    assert len(dataset) == 3 and dataset.release == "coco 2014"
    assert dataset[0]["meta"]["id"].startswith("COCO_val2014_")
    kept = {i["id"] for i in doc["images"]}
    orphans = [a["id"] for a in doc["annotations"] if a["image_id"] not in kept]
    assert [str(p) for p in dataset.check()] == [
        f"{tmp_path / 'annotations' / 'instances_val2014.json'}: {len(orphans)} annotation(s) refer to no image "
        f"of the file (first: annotation {orphans[0]})",
        f"{tmp_path / 'annotations' / 'instances_val2014.json'}: split 'val' lists 3 images; the official "
        f"coco 2014 val has 40504",
    ]
    assert validate(dataset) and all(p.level == "warning" for p in validate(dataset))
    with pytest.raises(ConfigError, match="year must be 2014 or 2017"):
        create_dataset("coco", "val", root=tmp_path, year=2015)
    with pytest.raises(DataError, match=r"not a COCO 2017 layout \(missing annotations/instances_val2017.json\)"):
        create_dataset("coco", "val", root=tmp_path)


# -- shapes exports, hand-made files ------------------------------------------------------------------------------
@pytest.mark.parametrize("segmentation", ["rle", "polygon"])
def test_shapes_export_reads_back(segmentation, tmp_path):
    shapes = ShapesDataset("val", num_val=4, image_size=48)
    export_coco(shapes, tmp_path, "val", segmentation=segmentation)
    dataset = CocoDataset(tmp_path, "val", name="shapes_coco")
    assert dataset.classes == SHAPES_CLASSES and dataset.category_ids == [None, 1, 2, 3, 4, 5, 6]
    assert dataset.check(full=True) == []
    for i in range(len(shapes)):
        got, want = dataset[i]["target"], shapes[i]["target"]
        assert torch.equal(got["classes"], want["classes"]) and torch.equal(got["boxes"], want["boxes"])
        if segmentation == "rle":
            assert torch.equal(got["masks"], want["masks"])
            outside_void = want["mask"] != 255  # the derived mask has no void band
            assert torch.equal(got["mask"][outside_void], want["mask"][outside_void])
        else:  # polygons through pixel centres: a pixel or so off along the outlines
            agree = (got["masks"] == want["masks"]).float().mean()
            assert agree > 0.97


def _instances(tmp_path: Path, anns: list[dict], size=(6, 8)) -> Path:
    """A one-image COCO layout (image ``size`` = (h, w)) with categories 1 'a' and 2 'b'."""
    from PIL import Image

    h, w = size
    (tmp_path / "val2017").mkdir(parents=True)
    (tmp_path / "annotations").mkdir()
    Image.new("RGB", (w, h), (90, 120, 30)).save(tmp_path / "val2017" / "1.jpg")
    for k, ann in enumerate(anns, start=1):
        ann.setdefault("id", k)
        ann.setdefault("image_id", 1)
        ann.setdefault("iscrowd", 0)
    doc = {"images": [{"id": 1, "file_name": "1.jpg", "height": h, "width": w}], "annotations": anns,
           "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))
    return tmp_path


def _rle(h: int, w: int, rows: slice, cols: slice, compressed: bool = False) -> dict:
    m = np.zeros((h, w), dtype=np.uint8)
    m[rows, cols] = 1
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(m))
        return {"size": [h, w], "counts": rle["counts"].decode()}
    flat = m.ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))  # run starts, 0-valued first
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [h, w], "counts": [c for c in counts if c >= 0]}


def test_semantic_rule_by_hand(tmp_path):
    """a (class 1) cols 0-3, b (class 2) cols 3-5 overlap at col 3 -> 255; a second a over the first: still 1;
    a crowd region on rows 4-5 is 255 except where an instance covers it."""
    h, w = 6, 8
    polygon_a = [0, 0, 4, 0, 4, 4, 0, 4]  # pixels x 0..3, y 0..3 (pycocotools rasterisation)
    anns = [
        {"category_id": 1, "segmentation": [polygon_a], "bbox": [0, 0, 4, 4]},
        {"category_id": 2, "segmentation": _rle(h, w, slice(0, 4), slice(3, 6), compressed=True), "bbox": [3, 0, 3, 4]},
        {"category_id": 1, "segmentation": _rle(h, w, slice(1, 3), slice(0, 2)), "bbox": [0, 1, 2, 2]},
        {"category_id": 2, "segmentation": _rle(h, w, slice(3, 6), slice(0, 8)), "bbox": [0, 3, 8, 3], "iscrowd": 1},
    ]
    dataset = CocoDataset(_instances(tmp_path, anns, (h, w)), "val")
    target = dataset[0]["target"]
    a = target["masks"][0].numpy()
    assert a[:4, :4].all() and a.sum() == 16
    expected = np.zeros((h, w), dtype=np.int64)
    expected[:4, :3] = 1
    expected[:4, 3] = 255  # a and b overlap
    expected[:4, 4:6] = 2
    expected[4:, :] = 255  # crowd, uncovered
    expected[3, 6:] = 255  # crowd row 3, uncovered by a or b
    assert np.array_equal(target["mask"].numpy(), expected)
    assert target["iscrowd"].tolist() == [False, False, False, True]
    assert target["labels"].tolist() == [0, 1, 1]
    rles = [dataset.coco.annToRLE(a) for a in dataset.coco.imgToAnns[1]]
    decoded = mask_utils.decode(rles)
    crowd = target["iscrowd"].numpy()
    assert np.array_equal(semantic_mask(decoded, target["classes"].numpy(), crowd, mask_utils.toBbox(rles)), expected)
    assert np.array_equal(semantic_from_rles(rles, target["classes"].numpy(), crowd, h, w), expected)


def test_image_without_annotations_and_bad_json(tmp_path):
    root = _instances(tmp_path / "empty", [])
    sample = CocoDataset(root, "val")[0]
    target = sample["target"]
    assert tuple(target["masks"].shape) == (0, 6, 8) and tuple(target["boxes"].shape) == (0, 4)
    assert not target["mask"].any() and not target["labels"].any()
    path = root / "annotations" / "instances_val2017.json"
    path.write_text('{"images": [], "annotations": [}')
    with pytest.raises(DataError) as info:
        CocoDataset(root, "val")
    assert str(info.value) == f"{path}: malformed JSON at line 1, column 32: Expecting value"
    path.write_text('{"images": []}')
    with pytest.raises(DataError, match=r"instances_val2017.json: not a COCO instances file \(no 'annotations' list\)"):
        CocoDataset(root, "val")


def test_registered_coco_refuses_other_categories(tmp_path):
    root = _instances(tmp_path, [])
    problems = COCO(root, "val").check()
    assert [p.line() for p in problems][0] == (
        f"error: {root / 'annotations' / 'instances_val2017.json'}: categories are not COCO's 80 "
        f"(id 1 is 'a', expected id 1 'person')")


def test_download_fetches_the_official_zips_when_missing(tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    calls = []
    monkeypatch.setattr(utils, "download_and_extract_archive",
                        lambda url, root, md5=None, remove_finished=False: calls.append((url, root, md5)))
    with pytest.raises(DataError, match="not a COCO 2017 layout"):
        COCO(tmp_path, "val", download=True)
    assert calls == [
        ("http://images.cocodataset.org/zips/val2017.zip", str(tmp_path), "442b8da7639aecaf257c1dceb8ba8c80"),
        ("http://images.cocodataset.org/annotations/annotations_trainval2017.zip", str(tmp_path),
         "f4bbac642086de4f52a3fdda2de5fa2c")]


# -- a run end to end ------------------------------------------------------------------------------------------------
@needs_coco
def test_a_weldon_run_on_real_coco_goes_end_to_end(tmp_path):
    """Trained and evaluated on train2017's 7 images (evaluating val2017 at full size would take longer)."""
    from segbench.engine.run import run_experiment

    outcome = run_experiment("weldon", "coco", recipe="quick", root=str(COCO_ROOT), split="train", runs=tmp_path, progress=False,
                             overrides={"steps": 2, "batch_size": 2, "crop_size": 64, "eval_size": 64})
    record = outcome.record
    assert record["status"] == "finished"
    assert {"cls_map", "loc_map"} <= set(record["metrics"]) and "accuracy" not in record["metrics"]
    assert record["dataset_identity"]["fingerprint"] == COCO(COCO_ROOT, "train").fingerprint
    assert record["dataset_identity"]["num_images"] == 7
