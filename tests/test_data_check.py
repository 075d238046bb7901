"""``segbench data check`` and the pre-run validation on deliberately broken copies of the genuine files.

Each breakage gives one exact line; the cheap walk (before every run) and the
full walk (``data check``) agree where both look; ``skip_bad`` drops and
counts; ``strict`` turns the split-count warning into an error.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segbench.cli import main
from segbench.data.checks import check_dataset, validate
from segbench.data.voc import VOC2012
from segbench.errors import DataError

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12 = SHARED / "voc2012" / "VOCdevkit" / "VOC2012"
COCO_ROOT = SHARED / "coco"
pytestmark = pytest.mark.skipif(not VOC12.is_dir() or not COCO_ROOT.is_dir(), reason="no ../shared/data samples")
IDS = ("2007_000032", "2007_000033", "2007_000063")


def segbench(capsys, *args) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def voc(tmp_path) -> tuple[Path, Path]:
    """A copy of the three segmented VOC2012 images: (root, VOC2012 folder)."""
    voc = tmp_path / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        (voc / sub).mkdir(parents=True)
        for path in (VOC12 / sub).iterdir():
            if path.stem in IDS:
                shutil.copy(path, voc / sub / path.name)
    shutil.copytree(VOC12 / "ImageSets", voc / "ImageSets")
    return tmp_path, voc


@pytest.fixture
def coco(tmp_path) -> Path:
    """A copy of the 7 train2017 images and their annotations."""
    shutil.copytree(COCO_ROOT / "train2017", tmp_path / "train2017")
    (tmp_path / "annotations").mkdir()
    shutil.copy(COCO_ROOT / "annotations" / "instances_train2017.json", tmp_path / "annotations")
    return tmp_path


def count_line(voc: Path, split: str, n: int, official: int) -> str:
    return (f"warning: {voc / 'ImageSets' / 'Segmentation' / f'{split}.txt'}: split '{split}' lists {n} images; "
            f"the official voc2012 {split} has {official}")


def test_a_clean_copy_passes_and_strict_fails_on_the_count(capsys, voc):
    root, folder = voc
    code, out, err = segbench(capsys, "data", "check", "voc2012", "--root", str(root), "--split", "train")
    assert code == 0 and out.splitlines() == [count_line(folder, "train", 2, 1464)]
    assert "voc2012 train: 2 images, 0 error(s), 1 warning(s)" in err and "voc2012: clean (1 warning(s))" in err
    code, out, err = segbench(capsys, "data", "check", "voc2012", "--root", str(root), "--split", "train", "--strict")
    assert code == 1 and out.splitlines() == [count_line(folder, "train", 2, 1464)]


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _resave_mask(path: Path, change) -> None:
    image = Image.open(path)
    palette = image.getpalette()
    array = change(np.array(image))
    out = Image.fromarray(array, mode="P")
    out.putpalette(palette)
    out.save(path)


BREAKAGES = {
    "truncated jpeg": (lambda v: _truncate(v / "JPEGImages" / "2007_000032.jpg"),
                       lambda v: f"error: {v / 'JPEGImages/2007_000032.jpg'}: image does not open (truncated file)"),
    "mask of the wrong size": (
        lambda v: Image.open(v / "SegmentationClass/2007_000063.png").resize((100, 80)).save(
            v / "SegmentationClass/2007_000063.png"),
        lambda v: f"error: {v / 'SegmentationClass/2007_000063.png'}: mask is 100x80 px but the image is 500x375 px"),
    "malformed xml": (
        lambda v: (v / "Annotations/2007_000063.xml").write_text("<annotation>\n\t<size>\n</annotation>\n"),
        lambda v: f"error: {v / 'Annotations/2007_000063.xml'}: malformed XML (mismatched tag: line 3, column 2)"),
    "missing image": (lambda v: (v / "JPEGImages/2007_000032.jpg").unlink(),
                      lambda v: f"error: {v / 'JPEGImages/2007_000032.jpg'}: missing file"),
    "missing mask": (lambda v: (v / "SegmentationClass/2007_000063.png").unlink(),
                     lambda v: f"error: {v / 'SegmentationClass/2007_000063.png'}: missing file"),
    "rgb mask": (
        lambda v: Image.open(v / "SegmentationClass/2007_000032.png").convert("RGB").save(
            v / "SegmentationClass/2007_000032.png"),
        lambda v: f"error: {v / 'SegmentationClass/2007_000032.png'}: mask is a mode RGB image; expected palette "
                  f"indices (mode P or L)"),
    "object mask of the wrong size": (
        lambda v: Image.open(v / "SegmentationObject/2007_000063.png").crop((0, 0, 500, 374)).save(
            v / "SegmentationObject/2007_000063.png"),
        lambda v: f"error: {v / 'SegmentationObject/2007_000063.png'}: object mask is 500x374 px but the image is "
                  f"500x375 px"),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
@pytest.mark.parametrize("quick", [False, True], ids=["full", "quick"])
def test_each_breakage_is_one_exact_line(capsys, voc, breakage, quick):
    root, folder = voc
    breaking, expected = BREAKAGES[breakage]
    breaking(folder)
    args = ["data", "check", "voc2012", "--root", str(root), "--split", "train"] + (["--quick"] if quick else [])
    code, out, err = segbench(capsys, *args)
    assert code == 1, err
    assert out.splitlines() == [expected(folder), count_line(folder, "train", 2, 1464)]


def test_mask_values_outside_the_classes_need_the_full_walk(capsys, voc):
    root, folder = voc
    path = folder / "SegmentationClass" / "2007_000032.png"

    def paint(array):
        array[10:20, 10:20] = 77
        return array

    _resave_mask(path, paint)
    line = f"{path}: mask has value 77 outside the classes 0..20 and 255"
    code, out, _ = segbench(capsys, "data", "check", "voc2012", "--root", str(root), "--split", "train")
    assert code == 1 and out.splitlines()[0] == f"error: {line}"
    code, out, _ = segbench(capsys, "data", "check", "voc2012", "--root", str(root), "--split", "train", "--quick")
    assert code == 0  # the cheap walk does not decode masks; the sample itself refuses to load
    with pytest.raises(DataError) as info:
        VOC2012(root, "train")[0]
    assert str(info.value) == line


def test_every_split_without_split_and_problems_listed_once(capsys, voc):
    root, folder = voc
    _truncate(folder / "JPEGImages" / "2007_000063.jpg")  # in train and trainval
    code, out, err = segbench(capsys, "data", "check", "voc2012", "--root", str(root))
    lines = out.splitlines()
    assert code == 1
    assert lines.count(f"error: {folder / 'JPEGImages/2007_000063.jpg'}: image does not open (truncated file)") == 1
    assert count_line(folder, "val", 1, 1449) in lines and count_line(folder, "trainval", 3, 2913) in lines
    assert any(line.startswith("warning: voc2012: split 'trainaug' not available: ") for line in lines)
    for split, n in (("train", 2), ("val", 1), ("trainval", 3)):
        assert f"voc2012 {split}: {n} images" in err


def test_layout_errors(capsys, tmp_path):
    code, out, _ = segbench(capsys, "data", "check", "voc2012", "--root", str(tmp_path))
    assert code == 1 and out.splitlines() == [
        f"error: {tmp_path}: not a VOC2012 layout (missing JPEGImages/); get "
        f"http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar and extract it under the root "
        f"(see docs/datasets.md), or pass --set download=true"]


# -- COCO -------------------------------------------------------------------------------------------------------
def test_coco_bad_json_size_mismatch_and_bad_polygon(capsys, coco):
    path = coco / "annotations" / "instances_train2017.json"
    doc = json.loads(path.read_text())
    doc["images"][0]["width"] += 1
    first = doc["images"][0]
    polygon_ann = next(a for a in doc["annotations"] if isinstance(a["segmentation"], list)
                       and a["image_id"] != first["id"])
    polygon_ann["segmentation"] = [[1, 2, 3, 4]]
    path.write_text(json.dumps(doc))
    code, out, _ = segbench(capsys, "data", "check", "coco", "--root", str(coco), "--split", "train")
    assert code == 1
    image = coco / "train2017" / first["file_name"]
    assert set(out.splitlines()) == {
        f"error: {image}: image is {first['width'] - 1}x{first['height']} px but instances_train2017.json says "
        f"{first['width']}x{first['height']} px",
        f"error: {path}: annotation {polygon_ann['id']}: polygon 0 must be an even list of at least 6 numbers",
        f"warning: {path}: split 'train' lists 7 images; the official coco 2017 train has 118287",
    }
    path.write_text('{"images": [1, 2,, 3]}')
    code, out, _ = segbench(capsys, "data", "check", "coco", "--root", str(coco), "--split", "train")
    assert code == 1 and out.splitlines() == [f"error: {path}: malformed JSON at line 1, column 18: Expecting value"]


# -- before a run -------------------------------------------------------------------------------------------------
def test_validate_raises_the_same_lines_with_a_count_and_skip_bad_counts(voc):
    root, folder = voc
    _truncate(folder / "JPEGImages" / "2007_000032.jpg")
    (folder / "Annotations" / "2007_000063.xml").write_text("<annotation>\n\t<size>\n</annotation>\n")
    report = check_dataset("voc2012", root, "train", full=False)
    dataset = VOC2012(root, "train")
    with pytest.raises(DataError) as info:
        validate(dataset)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"dataset 'voc2012' split 'train': 2 problems in the data: {report.errors[0]}; "
                              f"{report.errors[1]}; run 'segbench data check voc2012 --root {root} --split train'")
    assert message.endswith("or --set skip_bad=true to skip bad samples")
    skipping = VOC2012(root, "train", skip_bad=True)
    assert len(skipping) == 0 and skipping.skipped == 2 and skipping.skipped_ids == ["2007_000032", "2007_000063"]
    assert [p.level for p in validate(skipping)] == ["warning"]
    val = VOC2012(root, "val", strict=True)
    with pytest.raises(DataError, match="split 'val' lists 1 images; the official voc2012 val has 1449"):
        validate(val)
    assert validate(VOC2012(root, "val")) == VOC2012(root, "val").check()


def test_a_run_on_bad_data_stops_before_training_with_the_same_message(voc):
    from segbench.engine.run import run_experiment

    root, folder = voc
    _truncate(folder / "JPEGImages" / "2007_000033.jpg")  # the val image
    with pytest.raises(DataError) as info:
        validate(VOC2012(root, "val"))
    runs = root / "runs"
    with pytest.raises(DataError) as run_info:
        run_experiment("weldon", "voc2012", root=str(root), overrides={"steps": 1, "batch_size": 2,
                                                                      "crop_size": 64, "eval_size": 64},
                       runs=runs, progress=False)
    assert str(run_info.value).startswith(str(info.value))
    assert not list(runs.rglob("*.json"))  # stopped before a record was written
