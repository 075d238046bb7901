"""MIT67 and 15-Scene on hand-made copies of their official folder layouts (the real sets are not in ../shared)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data.builtin import MIT67_CLASSES, SCENE15_CLASSES
from segbench.data.scenes import MIT67, Scene15
from segbench.errors import ConfigError, DataError
from segbench.plugins import get_registry

SCENE15_FOLDERS = ("bedroom", "CALsuburb", "industrial", "kitchen", "livingroom", "MITcoast", "MITforest",
                   "MIThighway", "MITinsidecity", "MITmountain", "MITopencountry", "MITstreet",
                   "MITtallbuilding", "PARoffice", "store")


def _jpeg(path: Path, value: int, mode: str = "RGB", size=(12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 255 - value, 7)).save(path, format="JPEG")


@pytest.fixture
def mit67(tmp_path):
    """Three classes, 3 train + 1 test images each; one 'jpg' is really a GIF (as a few MIT67 files are).

    The test images' names have a space, as a few official ones do ("mall/shopping mall.jpg").
    """
    lines = {"train": [], "test": []}
    for c, cls in enumerate(("bakery", "kitchen", "winecellar")):
        for k in range(4):
            name = f"{cls}/img_{k}.jpg" if k < 3 else f"{cls}/img {k}.jpg"
            _jpeg(tmp_path / "Images" / name, 40 * c + k)
            lines["train" if k < 3 else "test"].append(name)
    Image.new("P", (9, 7), 3).save(tmp_path / "Images" / "kitchen" / "img_0.jpg", format="GIF")
    (tmp_path / "TrainImages.txt").write_text("\r\n".join(lines["train"]) + "\r\n")  # the official lists are CRLF
    (tmp_path / "TestImages.txt").write_text("\n".join(lines["test"]) + "\n")
    return tmp_path


def test_specs_have_no_background_and_want_one_label():
    registry = get_registry()
    for name, classes in (("mit67", MIT67_CLASSES), ("scene15", SCENE15_CLASSES)):
        spec = registry.dataset(name)
        assert spec.classes == classes and spec.background is None and spec.annotations == {"labels"}
        assert spec.splits == ("train", "test") and spec.eval_split == "test"
        assert spec.metric_defaults_for({}) == {"accuracy": {"single_label": True}}
    assert len(MIT67_CLASSES) == 67 and len(SCENE15_CLASSES) == 15


def test_mit67_reads_the_official_lists(mit67):
    train, test = MIT67(mit67, "train"), MIT67(mit67, "test")
    assert len(train) == 9 and len(test) == 3
    assert test.ids == ["bakery/img 3", "kitchen/img 3", "winecellar/img 3"]
    sample = train[0]
    assert tuple(sample["image"].shape) == (3, 10, 12) and sample["meta"]["orig_size"] == (10, 12)
    assert torch.nonzero(sample["target"]["labels"]).ravel().tolist() == [MIT67_CLASSES.index("bakery")]
    assert float(sample["target"]["labels"].sum()) == 1 and set(sample["target"]) == {"labels"}
    gif = train[3]  # kitchen/img_0.jpg is a GIF
    assert tuple(gif["image"].shape) == (3, 7, 9) and gif["target"]["labels"][MIT67_CLASSES.index("kitchen")] == 1
    assert [p.line() for p in test.check(full=True)] == [
        f"warning: {mit67 / 'TestImages.txt'}: split 'test' lists 3 images; the official mit67 test has 1340"]
    assert len(train.fingerprint) == 16 and train.fingerprint != test.fingerprint


def test_mit67_bad_entries_and_layout(mit67, tmp_path):
    with open(mit67 / "TestImages.txt", "a") as handle:
        handle.write("nightclub/x.jpg\nkitchen/missing.jpg\n")
    test = MIT67(mit67, "test")
    lines = [p.line() for p in test.check()]
    assert f"error: {mit67 / 'Images/nightclub/x.jpg'}: unknown class 'nightclub'; classes: airport_inside, " \
           in "".join(lines)
    assert f"error: {mit67 / 'Images/kitchen/missing.jpg'}: missing file" in lines
    with pytest.raises(DataError, match="unknown class 'nightclub'"):
        test[3]
    skipping = MIT67(mit67, "test", skip_bad=True)
    assert len(skipping) == 3 and skipping.skipped == 2 and skipping.skipped_ids == ["nightclub/x", "kitchen/missing"]
    with pytest.raises(DataError, match=r"not a MIT67 layout \(missing Images/\)"):
        MIT67(tmp_path / "Images", "train")


@pytest.fixture
def scene15(tmp_path):
    """All 15 folders as in the original release, 5 images each (grey JPEGs, as 15-Scene's are)."""
    root = tmp_path / "scene_categories"
    for c, folder in enumerate(SCENE15_FOLDERS):
        for k in range(5):
            _jpeg(root / folder / f"image_{k:04d}.jpg", 10 * c + k, mode="L", size=(40, 32))
    return tmp_path  # the class folders sit under the only subfolder


def test_scene15_folders_map_to_the_classes_and_the_hash_rule_splits(scene15):
    train = Scene15(scene15, "train", train_per_class=2)
    test = Scene15(scene15, "test", train_per_class=2)
    assert len(train) == 30 and len(test) == 45 and not set(train.ids) & set(test.ids)
    for cls in SCENE15_CLASSES:  # the documented rule, restated: the 2 smallest sha256("seed/class/name")
        names = [f"image_{k:04d}.jpg" for k in range(5)]
        ranked = sorted(names, key=lambda n: hashlib.sha256(f"0/{cls}/{n}".encode()).hexdigest())
        assert sorted(i for i in train.ids if i.startswith(cls + "/")) == sorted(f"{cls}/{n[:-4]}" for n in ranked[:2])
    sample = train[0]
    assert tuple(sample["image"].shape) == (3, 32, 40)  # grey -> RGB
    assert int(torch.nonzero(sample["target"]["labels"]).ravel()) == SCENE15_CLASSES.index(train.ids[0].split("/")[0])
    other = Scene15(scene15, "train", train_per_class=2, split_seed=1)
    assert other.ids != train.ids and len(other) == 30 and other.fingerprint != train.fingerprint
    assert Scene15(scene15, "train", train_per_class=2).fingerprint == train.fingerprint
    assert [p.level for p in train.check()] == []  # no official count at train_per_class=2


def test_scene15_membership_does_not_depend_on_other_files(scene15):
    before = set(Scene15(scene15, "train", train_per_class=2).ids)
    _jpeg(scene15 / "scene_categories" / "store" / "image_9999.jpg", 3, mode="L")
    after = set(Scene15(scene15, "train", train_per_class=2).ids)
    changed = {i.split("/")[0] for i in before ^ after}
    assert changed <= {"store"}


def test_scene15_count_warning_missing_classes_and_options(scene15, tmp_path):
    test = Scene15(scene15, "test")  # 100 per class: every image goes to train
    lines = [p.line() for p in test.check()]
    assert any(line.endswith("class 'bedroom' has 5 images: none left for test") for line in lines)
    assert lines[-1] == (f"warning: {scene15 / 'scene_categories'}: split 'test' lists 0 images; "
                         f"the official scene15 test has 2985")
    (scene15 / "scene_categories" / "MITcoast").rename(scene15 / "scene_categories" / "elsewhere")
    assert Scene15(scene15, "test", train_per_class=2).check()[0].line() == (
        f"error: {scene15 / 'scene_categories'}: missing class folder(s): coast")
    with pytest.raises(ConfigError, match="train_per_class must be an integer >= 1"):
        Scene15(scene15, "train", train_per_class=0)
    with pytest.raises(DataError, match="not a 15-Scene layout"):
        Scene15(tmp_path / "scene_categories" / "bedroom", "train")
    with pytest.raises(DataError, match="cannot be downloaded automatically"):
        Scene15(scene15, "train", download=True)


def test_mit67_download_fetches_the_archive_and_lists(tmp_path, monkeypatch):
    import torchvision.datasets.utils as utils

    calls = []
    monkeypatch.setattr(utils, "download_and_extract_archive",
                        lambda url, root, md5=None, remove_finished=False: calls.append(("archive", url, root)))
    monkeypatch.setattr(utils, "download_url", lambda url, root, filename=None: calls.append(("file", url, root)))
    with pytest.raises(DataError, match="not a MIT67 layout"):
        MIT67(tmp_path / "mit", "train", download=True)
    root = str(tmp_path / "mit")
    assert calls == [("archive", "http://groups.csail.mit.edu/vision/LabelMe/NewImages/indoorCVPR_09.tar", root),
                     ("file", "http://web.mit.edu/torralba/www/TrainImages.txt", root),
                     ("file", "http://web.mit.edu/torralba/www/TestImages.txt", root)]


def test_accuracy_is_reported_on_a_scene_run(scene15, tmp_path):
    from segbench.engine.run import run_experiment

    outcome = run_experiment("weldon", "scene15", recipe="quick", root=str(scene15), runs=tmp_path / "runs", progress=False,
                             overrides={"steps": 1, "batch_size": 2, "eval_size": 32, "train_per_class": 2})
    metrics = outcome.record["metrics"]
    assert {"accuracy", "mean_class_accuracy", "cls_map"} <= set(metrics)
    assert all(0 <= metrics[k] <= 1 for k in ("accuracy", "mean_class_accuracy"))
    assert np.isclose(metrics["accuracy"], metrics["mean_class_accuracy"])  # 3 test images in every class
