"""``folder``: images/ + masks/ + classes.txt (or datumaro's dataset_meta.json) written here in tmp_path, read
without a line of code: classes, derived labels, void, splits, colour-coded masks, checks, fingerprints, bad
input, and runs end to end through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segbench
from segbench.data.classlists import pick_background, read_dataset_meta
from segbench.data.files import hash_split
from segbench.data.folder import FolderDataset
from segbench.engine.config import parse_overrides
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry
from segbench.specs import resolve_classes
from segbench.testing.cli import run_cli as cli

CLASSES = ("background", "cat", "dog", "kite")
TINY = ["--recipe", "quick", "--set", "steps=2", "--set", "batch_size=2", "--set", "crop_size=32",
        "--set", "eval_size=32", "--set", "threads=1", "-q"]
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (251 * 3) + [224, 224, 192]


def mask_of(k: int, height: int = 24, width: int = 32) -> np.ndarray:
    """Background, a block of class 1 + k % 3 (image k), a void border around it and, for even k, a cat too."""
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[4:12, 4:14] = 255
    mask[5:11, 5:13] = 1 + k % 3
    if k % 2 == 0:
        mask[16:22, 20:30] = 1
    return mask


def make_folder(root: Path, n: int = 10, *, classes=CLASSES, suffix: str = ".png", meta: bool = False,
                rgb: bool = False, splits: dict[str, list[str]] | None = None) -> Path:
    """A folder dataset of ``n`` 32x24 images with palette masks (``rgb``: colour-coded RGB masks + meta file)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    colors = [PALETTE[3 * i:3 * i + 3] for i in range(len(classes))]
    for k in range(n):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"img{k:02d}{suffix}", quality=95)
        mask = mask_of(k)
        if rgb:
            painted = np.array(PALETTE, dtype=np.uint8).reshape(256, 3)[mask]
            Image.fromarray(painted, mode="RGB").save(root / "masks" / f"img{k:02d}.png")
        else:
            png = Image.fromarray(mask, mode="P")
            png.putpalette(PALETTE)
            png.save(root / "masks" / f"img{k:02d}.png")
    if meta or rgb:
        doc = {"label_map": {str(i): c for i, c in enumerate(classes)}}
        if rgb:
            doc["segmentation_colors"] = colors
        (root / "dataset_meta.json").write_text(json.dumps(doc))
    else:
        (root / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    if splits:
        (root / "splits").mkdir()
        for split, ids in splits.items():
            (root / "splits" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


@pytest.fixture()
def folder(tmp_path):
    return make_folder(tmp_path / "data")


def all_ids(n: int = 10) -> list[str]:
    return [f"img{k:02d}" for k in range(n)]


# -- classes, labels, masks ----------------------------------------------------------------------------------
def test_samples_carry_the_masks_as_stored_and_labels_derived_from_them(folder):
    for split in ("train", "val"):
        dataset = FolderDataset(folder, split)
        assert dataset.classes == CLASSES and dataset.background == 0
        for i in range(len(dataset)):
            sample = dataset[i]
            k = int(sample["meta"]["id"][3:])
            mask = sample["target"]["mask"]
            assert mask.dtype == torch.uint8 and tuple(mask.shape) == (24, 32)
            assert np.array_equal(mask.numpy(), mask_of(k))
            expected = torch.zeros(4)
            expected[1 + k % 3] = 1
            if k % 2 == 0:
                expected[1] = 1
            assert torch.equal(sample["target"]["labels"], expected)  # never the background, never void
            assert sample["image"].shape == (3, 24, 32) and sample["meta"]["orig_size"] == (24, 32)
            assert sample["meta"]["path"] == str(folder / "images" / f"img{k:02d}.png")


def test_labels_without_the_mask_target_equal_those_with_it(folder):
    full = FolderDataset(folder, "train")
    light = FolderDataset(folder, "train").select_targets({"labels"})
    for i in range(len(full)):
        a, b = full[i]["target"], light[i]["target"]
        assert "mask" not in b and torch.equal(a["labels"], b["labels"])
        assert torch.equal(light[i]["target"]["labels"], a["labels"])  # again, from the kept classes


def test_jpeg_images_and_grey_masks_are_read_too(tmp_path):
    root = make_folder(tmp_path / "d", 4, suffix=".jpg", splits={"train": all_ids(4)})
    for path in (root / "masks").glob("*.png"):
        Image.fromarray(np.array(Image.open(path)), mode="L").save(path)
    dataset = FolderDataset(root, "train")
    for k in range(4):
        sample = dataset[k]
        assert np.array_equal(sample["target"]["mask"].numpy(), mask_of(k))
        assert sample["meta"]["path"].endswith(f"img{k:02d}.jpg") and sample["image"].shape == (3, 24, 32)


def test_dataset_meta_json_with_rgb_masks_maps_colours_to_classes(tmp_path):
    palette_root = make_folder(tmp_path / "p")
    rgb_root = make_folder(tmp_path / "rgb", rgb=True)
    for split in ("train", "val"):
        a, b = FolderDataset(palette_root, split), FolderDataset(rgb_root, split)
        assert b.classes == CLASSES and b.ids == a.ids
        for i in range(len(a)):
            assert torch.equal(a[i]["target"]["mask"], b[i]["target"]["mask"])  # the VOC void colour is 255
            assert torch.equal(a[i]["target"]["labels"], b[i]["target"]["labels"])
    assert segbench.data.checks.check_dataset("folder", rgb_root, "val").clean()


def test_an_rgb_mask_colour_of_no_class_is_named(tmp_path):
    root = make_folder(tmp_path / "rgb", 4, rgb=True)
    path = root / "masks" / "img01.png"
    pixels = np.array(Image.open(path))
    pixels[2, 3] = (1, 2, 3)
    Image.fromarray(pixels).save(path)
    dataset = FolderDataset(root, hash_split("img01", 0, 0.2))
    index = dataset.ids.index("img01")
    with pytest.raises(DataError, match=r"img01.png: mask has colour \(1, 2, 3\) at pixel \(x 3, y 2\)"):
        dataset[index]


def test_background_is_the_class_so_named_else_none_unless_an_option_says(tmp_path):
    root = make_folder(tmp_path / "a", 4, classes=("sky", "_background_", "tree", "car"))
    assert FolderDataset(root, "train").background == 1
    assert FolderDataset(root, "train", background="none").background is None
    for setting, expected in (("background=none", None), ("background=auto", 1), ("background=tree", 2)):
        assert FolderDataset(root, "train", **parse_overrides([setting])).background == expected  # as --set gives it
    assert get_registry().dataset("folder").options["background"] == "auto"
    assert FolderDataset(root, "train", background="sky").background == 0
    assert FolderDataset(root, "train", background=2).background == 2
    with pytest.raises(ConfigError, match="option background must be a class of .*classes.txt"):
        FolderDataset(root, "train", background="cloud")
    other = make_folder(tmp_path / "b", 4, classes=("road", "cat", "dog", "kite"), splits={"train": all_ids(4)})
    assert FolderDataset(other, "train").background is None
    sample = FolderDataset(other, "train")[0]
    assert sample["target"]["labels"][0] == 1  # no background: class 0 is labelled like any other
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"label_map": {"0": "a", "1": "b"}, "background_label": "1"}))
    assert pick_background(read_dataset_meta(meta)) == 1


def test_a_void_option_makes_that_value_void(folder):
    classes = ("background", "cat", "dog", "kite")
    path = folder / "masks" / "img03.png"
    pixels = np.array(Image.open(path))
    pixels[0, :] = 200
    png = Image.fromarray(pixels, mode="P")
    png.putpalette(PALETTE)
    png.save(path)
    split = hash_split("img03", 0, 0.2)
    with pytest.raises(DataError, match=r"img03.png: mask has value 200 outside the classes 0..3 and 255"):
        FolderDataset(folder, split)[FolderDataset(folder, split).ids.index("img03")]
    dataset = FolderDataset(folder, split, void=200)
    mask = dataset[dataset.ids.index("img03")]["target"]["mask"].numpy()
    assert (mask[0] == 255).all() and dataset.classes == classes
    with pytest.raises(ConfigError, match="void 1 is class 'cat'"):
        FolderDataset(folder, split, void=1)


# -- splits ----------------------------------------------------------------------------------------------------
def test_without_splits_train_and_val_are_a_disjoint_seeded_hash_split(folder):
    train, val = FolderDataset(folder, "train"), FolderDataset(folder, "val")
    assert sorted(train.ids + val.ids) == all_ids() and not set(train.ids) & set(val.ids)
    assert val.ids == [i for i in all_ids() if hash_split(i, 0, 0.2) == "val"] and len(val) >= 1
    assert FolderDataset(folder, "val").ids == val.ids  # deterministic
    other = FolderDataset(folder, "val", split_seed=1, val_fraction=0.5)
    assert other.ids == [i for i in all_ids() if hash_split(i, 1, 0.5) == "val"] and other.ids != val.ids
    assert other.fingerprint != val.fingerprint
    with pytest.raises(DataError, match=r"splits/test.txt: missing file: split 'test' needs a list of stems"):
        FolderDataset(folder, "test")
    with pytest.raises(ConfigError, match="val_fraction must be a number between 0 and 1"):
        FolderDataset(folder, "val", val_fraction=1.0)


def test_hash_split_membership_depends_on_the_stem_alone(tmp_path):
    small = FolderDataset(make_folder(tmp_path / "small", 6), "val").ids
    large = FolderDataset(make_folder(tmp_path / "large", 30), "val").ids
    assert small == [i for i in large if i in all_ids(6)]
    assert 2 <= len(large) <= 12  # about 20% of 30


def test_split_files_give_the_splits_as_listed(tmp_path):
    root = make_folder(tmp_path / "d", splits={"train": all_ids()[:6], "val": all_ids()[6:9], "test": ["img09"]})
    assert FolderDataset(root, "train").ids == all_ids()[:6]
    assert FolderDataset(root, "val").ids == all_ids()[6:9]
    assert FolderDataset(root, "test").ids == ["img09"]
    (root / "splits" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"splits/test.txt: missing file \(the folder test list\)"):
        FolderDataset(root, "test")
    (root / "splits" / "val.txt").write_text("img06\nimg02\n")
    problems = FolderDataset(root, "val").check()
    assert [p.level for p in problems] == ["warning"]
    assert "1 image(s) of split 'val' are also in train.txt (first: img02)" in problems[0].message


def test_a_split_id_without_an_image_or_outside_the_root_names_the_list_and_line(tmp_path):
    root = make_folder(tmp_path / "d", 4, splits={"train": ["img00", "img01"], "val": ["img02", "nosuch"]})
    (root / "splits" / "val.txt").write_text("img02\n\nnosuch\n")  # the file's line, blank lines counted
    with pytest.raises(DataError, match=r"splits/val.txt: line 3: 'nosuch' has no image in"):
        FolderDataset(root, "val")
    (root / "splits" / "val.txt").write_text("img02\n../../outside/img00\n")
    with pytest.raises(DataError, match=r"splits/val.txt: line 2: '../../outside/img00' points outside"):
        FolderDataset(root, "val")
    (tmp_path / "elsewhere").mkdir()
    (root / "images" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "splits" / "val.txt").write_text("img02\nlink/img00\n")
    with pytest.raises(DataError, match=r"splits/val.txt: line 2: 'link/img00' points outside"):
        FolderDataset(root, "val")


# -- bad input -------------------------------------------------------------------------------------------------
def test_masks_that_match_no_image_are_named_with_their_count(folder):
    for k in range(5):
        shutil.copy(folder / "masks" / "img00.png", folder / "masks" / f"stray{k}.png")
    with pytest.raises(DataError, match=r"masks: 5 mask\(s\) match no image in images/: stray0.png, stray1.png, "
                                        r"stray2.png \(and 2 more\)"):
        FolderDataset(folder, "train")


def test_a_class_list_with_a_repeated_name_names_file_line_and_name(folder):
    (folder / "classes.txt").write_text("background\ncat\n\ndog\ncat\n")
    with pytest.raises(DataError, match=r"classes.txt: line 5: class 'cat' repeats line 2"):
        FolderDataset(folder, "train")
    (folder / "classes.txt").unlink()
    with pytest.raises(DataError, match=r"no class list \(classes.txt or dataset_meta.json\)"):
        FolderDataset(folder, "train")


def test_empty_images_or_missing_folders_are_one_line_errors(tmp_path):
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.txt").write_text("background\ncat\n")
    (root / "images" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"images: no images \(.jpg, .jpeg, .png"):
        FolderDataset(root, "train")
    shutil.rmtree(root / "masks")
    with pytest.raises(DataError, match=r"not a folder dataset \(missing masks/\)"):
        FolderDataset(root, "train")


def test_an_image_that_does_not_decode_is_named_or_skipped(folder):
    split = hash_split("img04", 0, 0.2)
    (folder / "images" / "img04.png").write_bytes(b"not an image at all")
    dataset = FolderDataset(folder, split)
    problems = dataset.check(full=True)
    assert [str(p) for p in problems] == [f"{folder / 'images' / 'img04.png'}: image does not open "
                                          f"(not an image file)"]
    with pytest.raises(DataError, match="img04.png: image does not open"):
        segbench.data.checks.validate(dataset)
    kept = FolderDataset(folder, split, skip_bad=True)
    assert kept.skipped == 1 and kept.skipped_ids == ["img04"] and "img04" not in kept.ids
    assert kept.fingerprint != dataset.fingerprint
    segbench.data.checks.validate(kept)


def test_a_missing_or_misfit_mask_is_found_by_the_cheap_walk(folder):
    split = hash_split("img05", 0, 0.2)
    (folder / "masks" / "img05.png").unlink()
    Image.fromarray(np.zeros((5, 5), np.uint8), mode="L").save(folder / "masks" / "img06.png")
    split6 = hash_split("img06", 0, 0.2)
    found = [str(p) for s in {split, split6} for p in FolderDataset(folder, s).check()]
    assert f"{folder / 'masks' / 'img05.png'}: missing file" in found
    assert f"{folder / 'masks' / 'img06.png'}: mask is 5x5 px but the image is 32x24 px" in found


# -- identity ------------------------------------------------------------------------------------------------
def test_the_fingerprint_follows_the_files_not_their_place(tmp_path, folder):
    val = FolderDataset(folder, "val")
    copy = shutil.copytree(folder, tmp_path / "copy")
    assert FolderDataset(copy, "val").fingerprint == val.fingerprint
    path = copy / "masks" / f"{val.ids[0]}.png"
    pixels = np.array(Image.open(path))
    pixels[0, 0] = 2
    png = Image.fromarray(pixels, mode="P")
    png.putpalette(PALETTE)
    png.save(path)
    assert FolderDataset(copy, "val").fingerprint != val.fingerprint
    (copy / "classes.txt").write_text("background\ncat\ndog\nbird\n")
    assert FolderDataset(copy, "val").fingerprint not in (val.fingerprint,)
    assert FolderDataset(folder, "val", background="none").fingerprint != val.fingerprint


def test_the_spec_says_classes_come_from_files_and_resolves_them(folder, capsys):
    spec = get_registry().dataset("folder")
    assert spec.classes_from_files and spec.splits == ("train", "val", "test")
    assert spec.options["void"] == 255 and spec.options["val_fraction"] == 0.2
    resolved = resolve_classes(spec, FolderDataset(folder, "val"), FolderDataset(folder, "train"))
    assert resolved.classes == CLASSES and resolved.background == 0 and resolved.num_classes == 4
    assert resolve_classes(get_registry().dataset("shapes"), object()) is get_registry().dataset("shapes")
    other = make_folder(folder.parent / "other", 4, classes=("background", "a", "b", "c"))
    with pytest.raises(ConfigError, match="split 'train' has classes"):
        resolve_classes(spec, FolderDataset(folder, "val"), FolderDataset(other, "train"))
    code, out, _ = cli(capsys, "list", "datasets")
    line = next(line for line in out.splitlines() if line.split()[0] == "folder")
    assert code == 0 and "classes from files" in line


# -- data check and runs through the CLI ------------------------------------------------------------------------
def test_data_check_is_clean_then_names_a_bad_mask_value(capsys, folder):
    code, out, err = cli(capsys, "data", "check", "folder", "--root", str(folder))
    assert code == 0 and "folder: clean" in err
    assert "folder train:" in err and "folder val:" in err and "split 'test' not available" in out
    path = folder / "masks" / "img07.png"
    pixels = np.array(Image.open(path))
    pixels[3, 3] = 9
    png = Image.fromarray(pixels, mode="P")
    png.putpalette(PALETTE)
    png.save(path)
    code, out, err = cli(capsys, "data", "check", "folder", "--root", str(folder))
    assert code == 1 and f"error: {path}: mask has value 9 outside the classes 0..3 and 255" in out


def record_of(out: str) -> dict:
    return json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text())


@pytest.mark.parametrize("method, metric", [("fcn8s", "miou"), ("weldon", "cls_map")])
def test_a_run_on_a_folder_records_its_classes_and_can_be_evaluated_again(capsys, tmp_path, folder, method, metric):
    runs = tmp_path / "runs"
    code, out, err = cli(capsys, "run", "--method", method, "--dataset", "folder", "--root", str(folder), *TINY,
                         "--runs-dir", str(runs))
    assert code == 0, err
    record = record_of(out)
    assert record["status"] == "finished" and record["class_names"] == list(CLASSES)
    assert metric in record["metrics"] and set(record["per_class"][next(iter(record["per_class"]))]) <= set(CLASSES)
    identity = record["dataset_identity"]
    assert identity["fingerprint"] == FolderDataset(folder, "val").fingerprint
    assert identity["train"]["fingerprint"] == FolderDataset(folder, "train").fingerprint
    assert identity["num_images"] == len(FolderDataset(folder, "val"))
    code, out, err = cli(capsys, "eval", record["run_id"], "--root", str(folder), "--runs-dir", str(runs), "-q")
    assert code == 0, err
    assert metric in out
    if method == "weldon":  # class maps over the images, titled with the folder's class names
        png = tmp_path / "cams.png"
        code, out, err = cli(capsys, "show", record["run_id"], "-o", str(png), "--root", str(folder), "--images", "2",
                             "--runs-dir", str(runs))
        assert code == 0, err
        assert Image.open(png).size[0] > 100


def test_a_run_on_a_folder_with_a_bad_file_is_refused_before_any_record(capsys, tmp_path, folder):
    (folder / "images" / "img01.png").write_bytes(b"nope")
    code, out, err = cli(capsys, "run", "--method", "weldon", "--dataset", "folder", "--root", str(folder), *TINY,
                         "--runs-dir", str(tmp_path / "runs"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "img01.png: image does not open" in err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
