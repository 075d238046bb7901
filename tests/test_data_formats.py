"""``voc_format`` and ``coco_format``: any data in the VOC or COCO layout, classes from its files, read by the
same readers as ``voc2012`` and ``coco``. On the genuine samples in ../shared/data they give the same targets
as those; on shapes exports and hand-made layouts, label maps, colour masks, splits and bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segbench
from segbench.data.builtin import COCO_CLASSES, SHAPES_CLASSES, VOC_CLASSES
from segbench.data.coco import COCO, CocoFormat
from segbench.data.export import export_coco, export_voc, voc_palette
from segbench.data.files import hash_split
from segbench.data.shapes import ShapesDataset
from segbench.data.voc import VOC2012, VOCDataset, VOCFormat
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry
from segbench.testing.cli import run_cli as cli

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12 = SHARED / "voc2012" / "VOCdevkit" / "VOC2012"
COCO_ROOT = SHARED / "coco"
needs_voc = pytest.mark.skipif(not VOC12.is_dir(), reason="no ../shared/data VOC sample")
needs_coco = pytest.mark.skipif(not (COCO_ROOT / "val2017").is_dir(), reason="no ../shared/data COCO sample")
COCO_VAL = COCO_ROOT / "annotations" / "instances_val2017.json"
COCO_TRAIN = COCO_ROOT / "annotations" / "instances_train2017.json"
TINY = ["--recipe", "quick", "--set", "steps=2", "--set", "batch_size=2", "--set", "crop_size=32",
        "--set", "eval_size=32", "--set", "threads=1", "-q"]


def same_targets(a: dict, b: dict) -> None:
    """Two samples hold the same image and the same targets, key for key and value for value."""
    assert torch.equal(a["image"], b["image"]) and a["meta"]["id"] == b["meta"]["id"]
    assert set(a["target"]) == set(b["target"])
    for key, value in a["target"].items():
        other = b["target"][key]
        assert (value == other) if not torch.is_tensor(value) else torch.equal(value, other), key


def record_of(out: str) -> dict:
    return json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text())


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory):
    """shapes val (6 images of 48 px) exported to the VOC layout, with its classes in a CVAT labelmap.txt."""
    out = tmp_path_factory.mktemp("shapes_voc")
    export_voc(ShapesDataset("val", num_val=6, image_size=48), out, "val")
    export_voc(ShapesDataset("train", num_train=6, image_size=48), out, "train")
    palette = np.asarray(voc_palette()).reshape(256, 3)
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{','.join(map(str, palette[i]))}::"
                                                   for i, n in enumerate(SHAPES_CLASSES)]
    (out / "labelmap.txt").write_text("\n".join(lines) + "\n")
    return out


# -- voc_format ------------------------------------------------------------------------------------------------
@needs_voc
@pytest.mark.parametrize("split", ["train", "val", "trainval"])
def test_voc_format_on_the_genuine_voc2012_sample_gives_voc2012s_targets(split):
    ours, theirs = VOCFormat(SHARED / "voc2012", split), VOC2012(SHARED / "voc2012", split)
    assert ours.classes == VOC_CLASSES and ours.background == 0 and ours.ids == theirs.ids and len(ours) >= 1
    for i in range(len(ours)):
        same_targets(ours[i], theirs[i])
    assert ours.fingerprint != theirs.fingerprint  # another dataset name: never pooled with voc2012


@needs_voc
def test_voc_format_without_annotations_derives_labels_from_the_masks(tmp_path):
    voc = tmp_path / "voc"
    voc.mkdir()
    for sub in ("JPEGImages", "SegmentationClass"):
        (voc / sub).symlink_to(VOC12 / sub, target_is_directory=True)
    shutil.copytree(VOC12 / "ImageSets", voc / "ImageSets")
    ours, theirs = VOCFormat(voc, "trainval"), VOC2012(SHARED / "voc2012", "trainval")
    assert ours.ids == theirs.ids
    for i in range(len(ours)):
        a, b = ours[i]["target"], theirs[i]["target"]
        assert torch.equal(a["mask"], b["mask"])
        present = set(np.unique(b["mask"].numpy()).tolist()) - {0, 255}
        assert set(torch.nonzero(a["labels"]).flatten().tolist()) == present and len(present) >= 1
        assert a["boxes"].shape == (0, 4) and a["classes"].numel() == 0 and "masks" not in a
    light = VOCFormat(voc, "trainval").select_targets({"labels"})
    for _ in range(2):  # the mask decoded the first time, its classes kept the second
        for i in range(len(light)):
            target = light[i]["target"]
            assert "mask" not in target and torch.equal(target["labels"], ours[i]["target"]["labels"])
    assert segbench.data.checks.check_dataset("voc_format", voc, "trainval").clean()


def test_voc_format_reads_a_cvat_labelmap_and_rgb_masks(tmp_path, shapes_voc):
    expected = VOCDataset(shapes_voc, "val", classes=SHAPES_CLASSES)
    palette_read = VOCFormat(shapes_voc, "val")
    assert palette_read.classes == SHAPES_CLASSES and palette_read.colors is not None
    rgb = shutil.copytree(shapes_voc, tmp_path / "rgb")
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    for path in (rgb / "SegmentationClass").glob("*.png"):
        Image.fromarray(palette[np.array(Image.open(path))], mode="RGB").save(path)  # as CVAT writes them
    rgb_read = VOCFormat(rgb, "val")
    for i in range(len(expected)):
        same_targets(palette_read[i], expected[i])
        same_targets(rgb_read[i], expected[i])  # colours back to indices, the void colour to 255
    assert not [p for p in rgb_read.check(full=True) if p.level == "error"]
    assert rgb_read.fingerprint != palette_read.fingerprint  # the masks' bytes differ


def test_voc_format_classes_txt_background_option_and_a_missing_split(tmp_path, shapes_voc):
    root = shutil.copytree(shapes_voc, tmp_path / "v")
    (root / "labelmap.txt").unlink()
    (root / "classes.txt").write_text("\n".join(SHAPES_CLASSES) + "\n")
    data = VOCFormat(root, "val")
    assert data.classes == SHAPES_CLASSES and data.colors is None and data.background == 0
    assert VOCFormat(root, "val", background="none").background is None
    with pytest.raises(DataError, match=r"ImageSets/Segmentation/test.txt: missing file \(the voc_format test list\)"):
        VOCFormat(root, "test")
    (root / "classes.txt").unlink()
    assert VOCFormat(root, "val").classes == VOC_CLASSES  # the default: VOC's 21
    (root / "labelmap.txt").write_text("background:0,0,0::\ndisc:128,0,0\nsquare:1,2\n")
    with pytest.raises(DataError, match=r"labelmap.txt: line 3: expected 'name:r,g,b::', got 'square:1,2'"):
        VOCFormat(root, "val")
    (root / "labelmap.txt").write_text("background:0,0,0::\ndisc:128,0,0::\ndisc:0,128,0::\n")
    with pytest.raises(DataError, match=r"labelmap.txt: line 3: class 'disc' repeats line 2"):
        VOCFormat(root, "val")


def test_voc_format_spec_and_an_end_to_end_run_record_the_files_classes(capsys, tmp_path, shapes_voc):
    spec = get_registry().dataset("voc_format")
    assert spec.classes_from_files and {"labels", "mask"} <= spec.annotations
    code, out, err = cli(capsys, "run", "--method", "fcn8s", "--dataset", "voc_format", "--root", str(shapes_voc),
                         *TINY, "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    record = record_of(out)
    assert record["class_names"] == list(SHAPES_CLASSES) and "miou" in record["metrics"]
    assert record["dataset_identity"]["fingerprint"] == VOCFormat(shapes_voc, "val").fingerprint
    assert record["dataset_identity"]["root"] == str(Path(shapes_voc).resolve())
    code, out, err = cli(capsys, "data", "check", "voc_format", "--root", str(shapes_voc), "--split", "val")
    assert code == 0 and "voc_format: clean" in err
    runs = ["--runs-dir", str(tmp_path / "runs")]
    code, out, err = cli(capsys, "eval", record["run_id"], "--quiet", *runs)  # no --root: the run's own
    assert code == 0, err
    assert f"{100 * record['metrics']['miou']:.2f} %" in out
    code, out, err = cli(capsys, "show", record["run_id"], "--predictions", "-o", str(tmp_path / "p.png"), *runs)
    assert code == 0 and (tmp_path / "p.png").is_file(), err


# -- coco_format -----------------------------------------------------------------------------------------------
@needs_coco
def test_coco_format_on_the_genuine_val2017_gives_cocos_targets():
    ours = CocoFormat(None, "val", annotations=COCO_VAL, images=COCO_ROOT / "val2017", train_annotations=COCO_TRAIN,
                      train_images=COCO_ROOT / "train2017")
    theirs = COCO(COCO_ROOT, "val")
    assert ours.classes == COCO_CLASSES and ours.category_ids == theirs.category_ids and len(ours) == 37
    assert ours.image_ids == theirs.image_ids and ours.annotation_file == theirs.annotation_file
    for i in range(len(ours)):
        same_targets(ours[i], theirs[i])
    train = CocoFormat(None, "train", annotations=COCO_VAL, images=COCO_ROOT / "val2017",
                       train_annotations=COCO_TRAIN, train_images=COCO_ROOT / "train2017")
    assert train.ids == COCO(COCO_ROOT, "train").ids


@needs_coco
def test_coco_format_one_file_is_a_disjoint_hash_split_and_paths_are_relative_to_the_root():
    options = {"annotations": "annotations/instances_val2017.json", "images": "val2017"}
    val, train = CocoFormat(COCO_ROOT, "val", **options), CocoFormat(COCO_ROOT, "train", **options)
    everything = COCO(COCO_ROOT, "val").ids
    assert sorted(val.ids + train.ids) == sorted(everything) and not set(val.ids) & set(train.ids)
    assert val.ids == [i for i in everything if hash_split(i, 0, 0.2) == "val"] and 1 <= len(val) < 37
    other = CocoFormat(COCO_ROOT, "val", split_seed=3, **options)
    assert other.ids != val.ids and other.fingerprint != val.fingerprint
    assert segbench.data.checks.check_dataset("coco_format", COCO_ROOT, options=options).clean()


def test_coco_format_needs_its_file_and_folder(tmp_path):
    with pytest.raises(ConfigError, match="coco_format' needs --set annotations=FILE"):
        CocoFormat(None, "val")
    with pytest.raises(DataError, match=r"nosuch.json: no such file \(option annotations of coco_format\)"):
        CocoFormat(None, "val", annotations=tmp_path / "nosuch.json", images=tmp_path)
    (tmp_path / "a.json").write_text("{}")
    with pytest.raises(DataError, match=r"imgs: no such directory \(option train_images of coco_format\)"):
        CocoFormat(None, "train", annotations=tmp_path / "a.json", images=tmp_path,
                   train_annotations=tmp_path / "a.json", train_images=tmp_path / "imgs")
    with pytest.raises(DataError, match=r"a.json: not a COCO instances file \(no 'images' list\)"):
        CocoFormat(None, "val", annotations=tmp_path / "a.json", images=tmp_path)


def test_coco_format_of_a_shapes_export_takes_its_categories_and_runs_end_to_end(capsys, tmp_path):
    out = tmp_path / "coco"
    export_coco(ShapesDataset("val", num_val=12, image_size=48), out, "val")
    options = ["--set", f"annotations={out / 'annotations' / 'instances_val2017.json'}",
               "--set", f"images={out / 'val2017'}"]
    data = CocoFormat(None, "val", annotations=out / "annotations" / "instances_val2017.json", images=out / "val2017")
    assert data.classes == SHAPES_CLASSES and data.category_ids == [None, 1, 2, 3, 4, 5, 6]
    code, stdout, err = cli(capsys, "run", "--method", "weldon", "--dataset", "coco_format", *options, *TINY,
                            "--runs-dir", str(tmp_path / "runs"))
    assert code == 0, err
    record = record_of(stdout)
    assert record["class_names"] == list(SHAPES_CLASSES) and "cls_map" in record["metrics"]
    assert record["config"]["data"]["annotations"].endswith("instances_val2017.json")
    assert record["dataset_identity"]["fingerprint"] == data.fingerprint
    assert record["dataset_identity"]["train"]["num_images"] + len(data) == 12
    code, stdout, err = cli(capsys, "data", "check", "coco_format", *options)
    assert code == 0 and "coco_format: clean" in err


def test_coco_format_files_at_another_path_give_the_same_run_and_changed_files_a_new_one(capsys, tmp_path):
    first = tmp_path / "here"
    export_coco(ShapesDataset("val", num_val=12, image_size=48), first, "val")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(first, moved)

    def run(where: Path) -> dict:
        options = ["--set", f"annotations={where / 'annotations' / 'instances_val2017.json'}",
                   "--set", f"images={where / 'val2017'}"]
        code, stdout, err = cli(capsys, "run", "--method", "weldon", "--dataset", "coco_format", *options, *TINY,
                                "--runs-dir", str(tmp_path / "runs"))
        assert code == 0, err
        return record_of(stdout)

    a, b = run(first), run(moved)
    assert a["run_id"] == b["run_id"]  # the same files elsewhere: the identical finished run, not a second one
    assert b["config"]["data"]["annotations"].startswith(str(first))  # reused: the record of the first path
    data = json.loads((moved / "annotations" / "instances_val2017.json").read_text())
    data["annotations"] = data["annotations"][1:]  # one object fewer
    (moved / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    assert run(moved)["run_id"] != a["run_id"]


def test_predict_writes_label_maps_in_the_datasets_own_colours(capsys, tmp_path, shapes_voc):
    mine = shutil.copytree(shapes_voc, tmp_path / "mine")
    colours = [(0, 0, 0), (250, 10, 10), (10, 250, 10), (10, 10, 250), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    lines = [f"{n}:{','.join(map(str, colours[i]))}::" for i, n in enumerate(SHAPES_CLASSES)]
    (mine / "labelmap.txt").write_text("\n".join(lines) + "\n")
    runs = ["--runs-dir", str(tmp_path / "runs")]
    code, out, err = cli(capsys, "run", "--method", "fcn8s", "--dataset", "voc_format", "--root", str(mine), *TINY,
                         *runs)
    assert code == 0, err
    record = record_of(out)
    assert record["class_colors"] == [list(c) for c in colours]
    image = next((mine / "JPEGImages").glob("*.jpg"))
    code, out, err = cli(capsys, "predict", record["run_id"], str(image), "-o", str(tmp_path / "out"), "-q", *runs)
    assert code == 0, err
    written = Image.open(tmp_path / "out" / f"{image.stem}.png")
    assert written.mode == "P"
    assert np.asarray(written.getpalette()[:3 * len(colours)]).reshape(-1, 3).tolist() == [list(c) for c in colours]
