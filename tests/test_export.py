"""Exports to the real VOC and COCO layouts, read back with the field's readers."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segbench.data.export import export, export_coco, export_voc, voc_palette
from segbench.data.shapes import ShapesDataset
from segbench.errors import DataError

REAL_VOC_PNG = Path("/work/shared/data/voc2012/VOCdevkit/VOC2012/SegmentationClass/2007_000063.png")


@pytest.fixture(scope="module")
def dataset():
    return ShapesDataset("val", num_val=6, image_size=64)


@pytest.fixture(scope="module")
def samples(dataset):
    return [dataset[i] for i in range(len(dataset))]


@pytest.fixture(scope="module")
def voc(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("voc")
    return out, export_voc(dataset, out, "val")


def test_voc_palette_is_the_real_one():
    palette = voc_palette()
    assert palette[:12] == [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0]
    assert palette[255 * 3 : 256 * 3] == [224, 224, 192]
    if REAL_VOC_PNG.exists():
        assert Image.open(REAL_VOC_PNG).getpalette()[: 256 * 3] == palette


def test_voc_layout_and_returned_paths(voc, samples):
    out, written = voc
    ids = [s["meta"]["id"] for s in samples]
    for sub, ext in (("JPEGImages", "jpg"), ("SegmentationClass", "png"), ("SegmentationObject", "png"),
                     ("Annotations", "xml")):
        assert sorted(p.name for p in (out / sub).iterdir()) == sorted(f"{i}.{ext}" for i in ids)
    for listing in ("ImageSets/Segmentation/val.txt", "ImageSets/Main/val.txt"):
        assert (out / listing).read_text().split() == ids
    files = {p for p in out.rglob("*") if p.is_file()}
    assert set(written) == files and len(written) == len(files)


def test_voc_xml_boxes_are_one_based_inclusive(voc, samples):
    out, _ = voc
    for s in samples:
        t = s["target"]
        root = ET.parse(out / "Annotations" / f"{s['meta']['id']}.xml").getroot()
        assert root.findtext("filename") == f"{s['meta']['id']}.jpg"
        assert (root.findtext("size/width"), root.findtext("size/height"), root.findtext("size/depth")) == (
            "64", "64", "3")
        objects = root.findall("object")
        assert [o.findtext("name") for o in objects] == [ShapesDataset.classes[c] for c in t["classes"].tolist()]
        for obj, box, m in zip(objects, t["boxes"].tolist(), t["masks"].numpy()):
            assert obj.findtext("difficult") == "0"
            got = [int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            assert got == [box[0] + 1, box[1] + 1, box[2], box[3]]
            cols, rows = np.flatnonzero(m.any(axis=0)), np.flatnonzero(m.any(axis=1))
            assert got == [cols[0] + 1, rows[0] + 1, cols[-1] + 1, rows[-1] + 1]  # 1-based inclusive pixels


def test_voc_pngs_hold_the_masks(voc, samples):
    out, _ = voc
    for s in samples:
        t = s["target"]
        cls_png = Image.open(out / "SegmentationClass" / f"{s['meta']['id']}.png")
        assert cls_png.mode == "P" and cls_png.getpalette()[: 256 * 3] == voc_palette()
        mask = t["mask"].numpy()
        assert np.array_equal(np.array(cls_png), mask)
        obj = np.array(Image.open(out / "SegmentationObject" / f"{s['meta']['id']}.png"))
        assert np.array_equal(obj == 255, mask == 255)
        for k, m in enumerate(t["masks"].numpy(), start=1):
            assert np.array_equal(obj == k, m & (mask != 255))
        jpeg = np.asarray(Image.open(out / "JPEGImages" / f"{s['meta']['id']}.jpg")).transpose(2, 0, 1)
        assert np.abs(jpeg.astype(int) - s["image"].numpy()).mean() < 6  # JPEG, quality 95


def test_voc_classification_lists(voc, samples):
    out, _ = voc
    lines = (out / "ImageSets" / "Main" / "star_val.txt").read_text().splitlines()
    expected = [f"{s['meta']['id']} {1 if s['target']['labels'][4] else -1:2d}" for s in samples]
    assert lines == expected


def test_refuses_non_empty_directories(dataset, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="not empty"):
        export_voc(dataset, tmp_path, "val")
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    written = export_voc(dataset, tmp_path, "val", overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine" and written


def test_adds_a_split_but_never_replaces_one_silently(dataset, tmp_path):
    export_coco(dataset, tmp_path, "val")
    export_coco(ShapesDataset("train", num_train=2, image_size=64), tmp_path, "train")
    assert json.loads((tmp_path / "segbench_export.json").read_text())["splits"] == ["train", "val"]
    with pytest.raises(DataError, match="already exported"):
        export_coco(dataset, tmp_path, "val")
    with pytest.raises(DataError, match="not empty"):  # a VOC export into a COCO directory
        export_voc(dataset, tmp_path, "test")
    with pytest.raises(DataError, match="unknown export format"):
        export(dataset, tmp_path / "x", "val", format="yolo")


def _coco_round_trip(dataset, samples, out, segmentation):
    export(dataset, out, "val", format="coco", segmentation=segmentation)
    coco = COCO(str(out / "annotations" / "instances_val2017.json"))
    assert [(c["id"], c["name"]) for c in coco.loadCats(coco.getCatIds())] == list(
        enumerate(ShapesDataset.classes))[1:]
    for index, s in enumerate(samples):
        info = coco.loadImgs(index + 1)[0]
        assert info["file_name"] == f"{s['meta']['id']}.jpg" and (info["height"], info["width"]) == (64, 64)
        assert Image.open(out / "val2017" / info["file_name"]).size == (64, 64)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[index + 1]))
        t = s["target"]
        assert [a["category_id"] for a in anns] == t["classes"].tolist()
        for ann, m, box in zip(anns, t["masks"].numpy(), t["boxes"].tolist()):
            assert ann["iscrowd"] == 0 and ann["area"] == m.sum()
            assert ann["bbox"] == [box[0], box[1], box[2] - box[0], box[3] - box[1]]
            yield ann, coco.annToMask(ann).astype(bool), m


def test_coco_rle_round_trip_is_exact(dataset, samples, tmp_path):
    for ann, decoded, m in _coco_round_trip(dataset, samples, tmp_path, "rle"):
        assert isinstance(ann["segmentation"]["counts"], str)
        assert np.array_equal(decoded, m)
        assert mask_utils.toBbox(ann["segmentation"]).tolist() == ann["bbox"]


def test_coco_polygons_round_trip_closely(dataset, samples, tmp_path):
    ious = []
    for ann, decoded, m in _coco_round_trip(dataset, samples, tmp_path, "polygon"):
        assert isinstance(ann["segmentation"], list) and all(len(p) >= 6 for p in ann["segmentation"])
        ious.append((decoded & m).sum() / (decoded | m).sum())
    assert min(ious) > 0.9, ious


def test_coco_json_scores_perfectly_against_itself(dataset, tmp_path):
    export_coco(dataset, tmp_path, "val")
    gt = COCO(str(tmp_path / "annotations" / "instances_val2017.json"))
    results = [{**a, "score": 1.0} for a in gt.dataset["annotations"]]
    for iou_type in ("segm", "bbox"):
        ev = COCOeval(gt, gt.loadRes(results), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        assert ev.stats[0] == pytest.approx(1.0)
