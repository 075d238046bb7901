"""PASCAL VOC loaders on the genuine files in ../shared/data, on shapes exports, and on hand-made layouts.

Independent references: torchvision's VOCSegmentation (images and masks),
torchvision's VOC XML parser (objects, boxes, difficult flags), the pixel
counts keras-cv asserts for 2007_000032, and the devkit's difficult rule
restated from the parsed XML.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data.builtin import ARCHIVES, SHAPES_CLASSES, VOC_CLASSES
from segbench.data.export import export_voc, voc_palette
from segbench.data.shapes import ShapesDataset
from segbench.data.voc import VOC2007, VOC2012, VOCDataset, parse_voc_xml
from segbench.errors import DataError
from segbench.plugins import get_registry

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12 = SHARED / "voc2012" / "VOCdevkit" / "VOC2012"
VOC07 = SHARED / "voc2007" / "VOCdevkit" / "VOC2007"
needs_voc = pytest.mark.skipif(not VOC12.is_dir() or not VOC07.is_dir(), reason="no ../shared/data VOC sample")
PERSON, AEROPLANE = VOC_CLASSES.index("person"), VOC_CLASSES.index("aeroplane")


def linked_voc07(tmp_path: Path, source: Path, splits: dict[str, list[str]]) -> Path:
    """A VOC2007 layout whose JPEGImages/ and Annotations/ are links to ``source``'s, with our own split lists."""
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations"):
        (voc / sub).symlink_to(source / sub, target_is_directory=True)
    for split, ids in splits.items():
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return tmp_path


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory):
    """shapes val exported to the VOC layout, with the samples it was written from."""
    dataset = ShapesDataset("val", num_val=5, image_size=48)
    out = tmp_path_factory.mktemp("shapes_voc")
    export_voc(dataset, out, "val")
    return out, [dataset[i] for i in range(len(dataset))]


# -- the registered specs -------------------------------------------------------------------------------
def test_specs_carry_classes_splits_annotations_citation_and_archives():
    registry = get_registry()
    voc12, voc07 = registry.dataset("voc2012"), registry.dataset("voc2007")
    assert voc12.classes == VOC_CLASSES and len(voc12.classes) == 21 and voc12.background == 0
    assert voc12.splits == ("train", "val", "trainval", "trainaug")
    assert {"labels", "labels_ignore", "mask", "boxes", "classes"} <= voc12.annotations
    assert voc07.splits == ("trainval", "test") and "mask" not in voc07.annotations
    assert voc07.metric_defaults_for({})["cls_map"] == {"variant": "voc07"}
    for spec in (voc12, voc07):
        assert "Everingham" in spec.citation and spec.url.startswith("http")
        assert all(len(a["md5"]) == 32 for a in ARCHIVES[spec.name])


# -- genuine files ------------------------------------------------------------------------------------------
@needs_voc
def test_real_voc2012_train_sample_matches_keras_cv_pixel_counts():
    train = VOC2012(SHARED / "voc2012", "train")
    assert train.ids == ["2007_000032", "2007_000063"]
    sample = train[0]
    image, target, meta = sample["image"], sample["target"], sample["meta"]
    assert image.dtype == torch.uint8 and tuple(image.shape) == (3, 281, 500)
    assert meta == {"id": "2007_000032", "path": str(VOC12 / "JPEGImages" / "2007_000032.jpg"),
                    "orig_size": (281, 500), "difficult": [False] * 4}
    mask = target["mask"]
    assert mask.dtype == torch.uint8 and tuple(mask.shape) == (281, 500)
    assert set(mask.unique().tolist()) == {0, AEROPLANE, PERSON, 255}
    assert int((mask == AEROPLANE).sum()) == 4734 and int((mask == PERSON).sum()) == 866
    assert torch.nonzero(target["labels"]).ravel().tolist() == [AEROPLANE, PERSON]
    assert not target["labels_ignore"].any() and target["labels"][0] == 0
    # XML 1-based inclusive (104, 78, 375, 183) -> continuous (103, 77, 375, 183)
    assert target["boxes"][0].tolist() == [103.0, 77.0, 375.0, 183.0]
    assert target["classes"].tolist() == [AEROPLANE, AEROPLANE, PERSON, PERSON]
    assert "masks" not in target  # 2007_000032 has no SegmentationObject here


@needs_voc
def test_real_images_and_masks_equal_torchvision_vocsegmentation():
    from torchvision.datasets import VOCSegmentation

    for split in ("train", "val"):
        ours = VOC2012(SHARED / "voc2012", split)
        reference = VOCSegmentation(str(SHARED / "voc2012"), year="2012", image_set=split)
        assert len(ours) == len(reference)
        for i in range(len(ours)):
            image, mask = reference[i]
            sample = ours[i]
            assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), np.asarray(image.convert("RGB")))
            assert np.array_equal(sample["target"]["mask"].numpy(), np.asarray(mask))


@needs_voc
def test_instance_masks_follow_the_xml_order():
    sample = VOC2012(SHARED / "voc2012", "train")[1]  # 2007_000063: a dog, then a chair
    target = sample["target"]
    assert target["classes"].tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("chair")]
    masks = target["masks"]
    assert masks.dtype == torch.bool and tuple(masks.shape) == (2, 375, 500)
    for k in range(2):
        under = target["mask"][masks[k]]
        assert set(under.unique().tolist()) - {255} == {int(target["classes"][k])}
        ys, xs = torch.nonzero(masks[k], as_tuple=True)
        x1, y1, x2, y2 = target["boxes"][k].tolist()
        assert x1 - 5 <= xs.min() and xs.max() + 1 <= x2 + 5 and y1 - 5 <= ys.min() and ys.max() + 1 <= y2 + 5


@needs_voc
def test_every_real_xml_parses_like_torchvision():
    from torchvision.datasets import VOCDetection

    xmls = sorted((VOC12 / "Annotations").glob("*.xml")) + sorted((VOC07 / "Annotations").glob("*.xml"))
    assert len(xmls) == 105
    for path in xmls:
        ours = parse_voc_xml(path.read_bytes(), path)
        reference = VOCDetection.parse_voc_xml(ET.parse(path).getroot())["annotation"]
        objects = reference.get("object", [])
        assert ours.names == [o["name"] for o in objects], path.name
        expected = [[float(o["bndbox"][k]) - d for k, d in (("xmin", 1), ("ymin", 1), ("xmax", 0), ("ymax", 0))]
                    for o in objects]
        assert np.allclose(ours.boxes, np.asarray(expected, dtype=np.float32).reshape(-1, 4)), path.name
        assert ours.difficult.tolist() == [o.get("difficult", "0") == "1" for o in objects], path.name
        assert ours.size == (int(reference["size"]["width"]), int(reference["size"]["height"]))


@needs_voc
def test_difficult_only_classes_are_ignored_as_the_devkit_does(tmp_path):
    """2007_000250: a difficult dining table and a bottle; 2007_000515: difficult bicycle and person, two cars."""
    from torchvision.datasets import VOCDetection

    ids = ["2007_000250", "2007_000515", "2007_000129", "2007_000170"]
    test = VOC2007(linked_voc07(tmp_path, VOC12, {"test": ids}), "test")
    assert test.ids == ids
    for i, image_id in enumerate(ids):
        objects = VOCDetection.parse_voc_xml(ET.parse(VOC12 / "Annotations" / f"{image_id}.xml").getroot())
        objects = objects["annotation"]["object"]
        gt = np.full(21, -1)  # the devkit's {class}_test.txt: 1 present, 0 only difficult, -1 absent
        for o in objects:
            c = VOC_CLASSES.index(o["name"])
            gt[c] = max(gt[c], 1 if o["difficult"] == "0" else 0)
        target = test[i]["target"]
        assert target["labels"].tolist() == (gt == 1).astype(float).tolist(), image_id
        assert target["labels_ignore"].tolist() == (gt == 0).tolist(), image_id
        assert len(target["boxes"]) == len(objects)  # difficult boxes are kept (documented)
        assert test[i]["meta"]["difficult"] == [o["difficult"] == "1" for o in objects]
    first = test[0]["target"]
    assert first["labels_ignore"][VOC_CLASSES.index("diningtable")] and first["labels"][VOC_CLASSES.index("bottle")]


@needs_voc
def test_real_voc2007_multi_label_and_official_counts(tmp_path):
    root = linked_voc07(tmp_path, VOC07, {"trainval": ["000005"], "test": ["000002", "000003", "000004"]})
    trainval, test = VOC2007(root, "trainval"), VOC2007(root, "test")
    chair = VOC_CLASSES.index("chair")
    target = trainval[0]["target"]
    assert target["labels"][chair] == 1 and not target["labels_ignore"].any()  # 3 easy chairs, 2 difficult
    assert len(target["boxes"]) == 5 and "mask" not in target
    sofa_and_chair = test[1]["target"]["labels"]  # 000003
    assert torch.nonzero(sofa_and_chair).ravel().tolist() == [chair, VOC_CLASSES.index("sofa")]
    assert [str(p) for p in test.check()] == [
        f"{root / 'VOCdevkit/VOC2007/ImageSets/Main/test.txt'}: split 'test' lists 3 images; "
        f"the official voc2007 test has 4952"]


# -- shapes exports -------------------------------------------------------------------------------------------
def test_shapes_export_reads_back_exactly(shapes_voc):
    out, samples = shapes_voc
    dataset = VOCDataset(out, "val", classes=SHAPES_CLASSES, name="shapes_voc")
    assert dataset.ids == [s["meta"]["id"] for s in samples]
    for sample, expected in zip(dataset, samples):
        got, want = sample["target"], expected["target"]
        assert torch.equal(got["mask"], want["mask"])
        # SegmentationObject marks the void band 255, like VOC's: instances read back without it
        assert torch.equal(got["masks"], want["masks"] & (want["mask"] != 255))
        assert torch.equal(got["classes"], want["classes"])
        assert torch.equal(got["boxes"], want["boxes"])
        assert torch.equal(got["labels"], want["labels"])
        decoded = np.asarray(Image.open(sample["meta"]["path"]).convert("RGB"))
        assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), decoded)
        assert (sample["image"].int() - expected["image"].int()).abs().float().mean() < 8  # JPEG quality 95
    assert dataset.check(full=True) == []
    light = dataset.select_targets({"labels"})[0]["target"]
    assert "mask" not in light and "masks" not in light and {"labels", "labels_ignore", "boxes"} <= set(light)


def test_fingerprint_follows_contents_not_location(shapes_voc, tmp_path):
    out, _ = shapes_voc
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    a = VOCDataset(out, "val", classes=SHAPES_CLASSES).fingerprint
    assert VOCDataset(copy, "val", classes=SHAPES_CLASSES).fingerprint == a
    xml = next((copy / "Annotations").glob("*.xml"))
    xml.write_text(xml.read_text().replace("<pose>Unspecified</pose>", "<pose>Left</pose>", 1))
    b = VOCDataset(copy, "val", classes=SHAPES_CLASSES).fingerprint
    assert b != a
    png = next((copy / "SegmentationClass").glob("*.png"))
    mask = np.array(Image.open(png))
    mask[0, 0] = 1 if mask[0, 0] != 1 else 2
    img = Image.fromarray(mask, mode="P")
    img.putpalette(voc_palette())
    img.save(png)
    assert VOCDataset(copy, "val", classes=SHAPES_CLASSES).fingerprint not in (a, b)
    assert len(a) == 16 and int(a, 16) >= 0


# -- trainaug ---------------------------------------------------------------------------------------------------
def _voc_from_shapes(tmp_path: Path, ids: dict[str, list[str]]) -> tuple[Path, list[str]]:
    """A VOC layout with VOC class names (shapes pictures, labels renamed), split lists as given."""
    dataset = ShapesDataset("val", num_val=6, image_size=32, max_objects=2)
    out = tmp_path / "VOCdevkit" / "VOC2012"
    export_voc(dataset, out, "val", class_names=VOC_CLASSES[:7])
    all_ids = (out / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for split, chosen in ids.items():
        (out / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"{all_ids[i]}\n" for i in chosen))
    return tmp_path, all_ids


def test_trainaug_from_sbd_mat_files(tmp_path):
    from scipy.io import savemat

    root, ids = _voc_from_shapes(tmp_path, {"train": [0, 1], "val": [2]})
    sbd = root / "SBD"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text(f"{ids[1]}\n{ids[3]}\n{ids[2]}\n")  # SBD train overlaps VOC val (ids[2])
    (sbd / "val.txt").write_text(f"{ids[4]}\n")
    masks = {}
    for k in (3, 4):
        masks[ids[k]] = np.random.default_rng(k).integers(0, 7, (32, 32)).astype(np.uint8)
        savemat(sbd / "cls" / f"{ids[k]}.mat", {"GTcls": {"Segmentation": masks[ids[k]], "Boundaries": [],
                                                          "CategoriesPresent": [1]}})
        (root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{ids[k]}.png").unlink()  # SBD-only images
    aug = VOC2012(root, "trainaug", sbd_root=None)
    assert aug.ids == sorted([ids[0], ids[1], ids[3], ids[4]])  # (VOC train | SBD train | SBD val) - VOC val
    assert aug.split_source == sbd
    for sample in aug:
        image_id = sample["meta"]["id"]
        mask = sample["target"]["mask"].numpy()
        if image_id in masks:  # only in SBD: the .mat mask
            assert np.array_equal(mask, masks[image_id])
        else:  # VOC's own SegmentationClass PNG, void band included
            png = root / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{image_id}.png"
            assert np.array_equal(mask, np.array(Image.open(png)))
    assert [p.message for p in aug.check(full=True)] == ["split 'trainaug' lists 4 images; the official voc2012 "
                                                         "trainaug has 10582"]


def test_trainaug_from_segmentation_class_aug_and_without_any_source(tmp_path):
    root, ids = _voc_from_shapes(tmp_path, {"train": [0], "val": [1]})
    with pytest.raises(DataError, match="no source for split 'trainaug'"):
        VOC2012(root, "trainaug")
    aug_dir = root / "VOCdevkit" / "VOC2012" / "SegmentationClassAug"
    aug_dir.mkdir()
    grey = np.full((32, 32), 3, dtype=np.uint8)
    for image_id in ids:
        Image.fromarray(grey, mode="L").save(aug_dir / f"{image_id}.png")
    aug = VOC2012(root, "trainaug")
    assert aug.ids == sorted(set(ids) - {ids[1]})
    assert all(int(s["target"]["mask"].unique()) == 3 for s in aug)


# -- bad roots --------------------------------------------------------------------------------------------------
def test_bad_roots_are_one_line_errors_with_a_hint(tmp_path, monkeypatch):
    with pytest.raises(DataError) as info:
        VOC2012(tmp_path / "nowhere", "val")
    assert str(info.value).startswith(f"{tmp_path / 'nowhere'}: no such directory; get http://host.robots")
    (tmp_path / "VOCdevkit" / "VOC2012").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        VOC2012(tmp_path, "val")
    assert str(info.value).startswith(f"{tmp_path / 'VOCdevkit' / 'VOC2012'}: not a VOC2012 layout "
                                      f"(missing JPEGImages/); get ")
    assert "download=true" in str(info.value) and "\n" not in str(info.value)
    monkeypatch.delenv("SEGBENCH_DATA", raising=False)
    from segbench.api import create_dataset

    with pytest.raises(DataError, match="dataset 'voc2012' needs a root directory: pass --root DIR or set "):
        create_dataset("voc2012", "val")
    monkeypatch.setenv("SEGBENCH_DATA", str(tmp_path))
    with pytest.raises(DataError, match="voc2012: no such directory"):
        create_dataset("voc2012", "val")


def test_download_uses_torchvision_only_when_the_layout_is_missing(tmp_path, monkeypatch, shapes_voc):
    import torchvision.datasets

    calls = []

    class FakeVOC:
        def __init__(self, root, year, image_set, download):
            calls.append((root, year, image_set, download))

    monkeypatch.setattr(torchvision.datasets, "VOCSegmentation", FakeVOC)
    monkeypatch.setattr(torchvision.datasets, "VOCDetection", FakeVOC)
    with pytest.raises(DataError, match="not a VOC2012 layout"):  # the fake downloads nothing
        VOC2012(tmp_path / "new", "val", download=True)
    assert calls == [(str(tmp_path / "new"), "2012", "trainval", True)]
    with pytest.raises(DataError, match="not a VOC2007 layout"):
        VOC2007(tmp_path / "new07", "test", download=True)
    assert calls[-1] == (str(tmp_path / "new07"), "2007", "test", True)
    out, _ = shapes_voc
    calls.clear()
    VOCDataset(out, "val", classes=SHAPES_CLASSES, download=True)
    assert calls == []


# -- a run end to end on the genuine files --------------------------------------------------------------------
TINY = {"steps": 2, "batch_size": 2, "crop_size": 64, "eval_size": 64}


@needs_voc
@pytest.mark.parametrize("method, expected", [("weldon", {"cls_map", "loc_map"}), ("fcn8s", {"miou", "loc_map"})])
def test_a_run_on_real_voc2012_goes_end_to_end(method, expected, tmp_path):
    from segbench.engine.run import run_experiment

    outcome = run_experiment(method, "voc2012", recipe="quick", root=str(SHARED / "voc2012"), overrides=TINY, runs=tmp_path,
                             progress=False)
    record = outcome.record
    assert record["status"] == "finished"
    assert expected <= set(record["metrics"]) and "accuracy" not in record["metrics"]
    assert all(0 <= v <= 1 for k, v in record["metrics"].items() if k in expected)
    identity = record["dataset_identity"]
    assert identity == {"name": "voc2012", "split": "val", "num_images": 1,
                        "fingerprint": VOC2012(SHARED / "voc2012", "val").fingerprint} | {
        k: v for k, v in identity.items() if k not in ("name", "split", "num_images", "fingerprint")}


@needs_voc
def test_changing_one_training_mask_gives_a_new_run_not_the_old_result(tmp_path):
    """The training split's files are part of config_id: an edited training mask is a new run, never pooled."""
    from segbench.engine.run import run_experiment
    from segbench.results.leaderboard import summary_frame
    from segbench.results.store import RunStore

    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations", "SegmentationObject"):
        (voc / sub).symlink_to(VOC12 / sub, target_is_directory=True)
    for sub in ("ImageSets", "SegmentationClass"):
        shutil.copytree(VOC12 / sub, voc / sub)
    runs = tmp_path / "runs"

    def run():
        return run_experiment("fcn8s", "voc2012", recipe="quick", root=str(root), overrides={**TINY, "steps": 1}, runs=runs,
                              progress=False)

    first = run()
    assert first.record["dataset_identity"]["train"]["split"] == "train"
    assert first.record["dataset_identity"]["train"]["num_images"] == 2
    assert run().reused  # nothing changed: the finished record is the answer
    eval_fingerprint = first.record["dataset_identity"]["fingerprint"]
    mask = voc / "SegmentationClass" / "2007_000063.png"  # a training image's mask (val is 2007_000033)
    pixels = np.array(Image.open(mask))
    pixels[:10, :10] = 1
    edited = Image.fromarray(pixels, mode="P")
    edited.putpalette(Image.open(mask).getpalette())
    edited.save(mask)
    second = run()
    assert not second.reused
    assert second.record["dataset_identity"]["fingerprint"] == eval_fingerprint  # the evaluated split is unchanged
    assert second.record["dataset_identity"]["train"]["fingerprint"] != first.record["dataset_identity"]["train"][
        "fingerprint"]
    assert second.record["config_id"] != first.record["config_id"]
    (voc / "ImageSets" / "Segmentation" / "train.txt").write_text("2007_000032\n")  # the list changes too
    third = run()
    assert not third.reused and third.record["dataset_identity"]["train"]["num_images"] == 1
    records = RunStore(runs).find(status="finished")
    summary = summary_frame(records)
    assert summary[summary["metric"] == "miou"]["n"].tolist() == [1, 1, 1]  # three training sets, never pooled
