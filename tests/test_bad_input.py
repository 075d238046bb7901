"""Bad input as a new user meets it: each case a non-zero exit, one line naming what is wrong, no traceback,
and the files under the runs directory and the data exactly as before.

The cases come from a corpus of bad inputs run against the CLI (issue 19); the ones other test files cover in
depth (records, COCO results, truncated images, sweeps) are there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from segbench.testing.cli import run_cli as cli

SHARED = Path(os.environ.get("SEGBENCH_SHARED_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
VOC12 = SHARED / "voc2012" / "VOCdevkit" / "VOC2012"
COCO = SHARED / "coco"
needs_shared = pytest.mark.skipif(not VOC12.is_dir() or not COCO.is_dir(), reason="no ../shared/data sample")
TINY = ["--set", "steps=1", "--set", "image_size=32", "--set", "num_train=4", "--set", "num_val=2", "-q"]




def snapshot(*roots: Path) -> dict[str, int]:
    """Every file under ``roots`` with its size: what a refused command must leave as it was."""
    files = {}
    for root in roots:
        if root.exists():
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    files[str(path)] = path.stat().st_size
    return files


def refused(capsys, tmp_path, *args, watch=()) -> str:
    """Run a command that must be refused; returns its one error line."""
    runs = tmp_path / "runs"
    before = snapshot(runs, *watch)
    code, out, err = cli(capsys, *args, "--runs-dir", str(runs)) if args[0] == "run" else cli(capsys, *args)
    assert code != 0, out
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert snapshot(runs, *watch) == before
    return lines[0]


@pytest.mark.parametrize("setting, message", [
    ("steps=abc", "--set steps expects an integer, got 'abc'"),
    ("lr=nan", "--set lr expects a number, got 'nan'"),
    ("lr=inf", "--set lr expects a number, got 'inf'"),
    ("lr=1e999", "--set lr expects a finite number, got inf"),
    ("lr=-0.1", "lr must be a positive finite number, got -0.1"),
    ("threads=-1", "threads must be 0 or more, got -1"),
    ("workers=-1", "workers must be 0 or more, got -1"),
    ("batch_size=0", "batch_size must be at least 1, got 0"),
    ("momentum=-1", "momentum must be a finite number >= 0, got -1.0"),
    ("scale_min=2", "scale_min and scale_max must satisfy 0 < scale_min <= scale_max"),
    ("hflip=3", "--set hflip expects true or false, got 3"),
    ("num_train=0", "dataset 'shapes': the training split 'train' is empty"),
    ("nonsense=1", "unknown --set key 'nonsense'"),
])
def test_a_bad_set_value_is_one_line_and_claims_nothing(capsys, tmp_path, setting, message):
    line = refused(capsys, tmp_path, "run", "--method", "weldon", *TINY, "--set", setting)
    assert message in line


def test_common_overrides_are_no_longer_ambiguous_or_misnamed(capsys, tmp_path):
    """``--set steps`` on WSLoc is the training steps (the beam search's is ``beam_steps``)."""
    code, out, err = cli(capsys, "run", "--method", "wsloc", *TINY, "--set", "batch_size=2", "--runs-dir",
                         str(tmp_path / "runs"))
    assert code == 0, err
    record = json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text())
    assert record["config"]["train"]["steps"] == 1 and "beam_steps" in record["config"]["model"]


def test_an_unknown_leaderboard_suffix_is_refused_and_writes_nothing(capsys, tmp_path):
    line = refused(capsys, tmp_path, "leaderboard", "--runs-dir", str(tmp_path), "-o", str(tmp_path / "t.xlsx"),
                   watch=[tmp_path])
    assert "t.xlsx: cannot tell the table format from the suffix '.xlsx'" in line and "--format" in line


@needs_shared
def test_a_voc_list_line_leaving_the_root_names_the_list_and_line(capsys, tmp_path):
    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    for sub in ("JPEGImages", "Annotations", "SegmentationClass", "SegmentationObject"):
        (voc / sub).symlink_to(VOC12 / sub, target_is_directory=True)
    shutil.copytree(VOC12 / "ImageSets", voc / "ImageSets")
    listing = voc / "ImageSets" / "Segmentation" / "train.txt"
    listing.write_text("2007_000032\n../../../../../outside/evil\n")
    line = refused(capsys, tmp_path, "run", "--method", "fcn8s", "--dataset", "voc2012", "--recipe", "quick",
                   "--root", str(root), "-q", watch=[root])
    assert f"{listing}: line 2: '../../../../../outside/evil' points outside" in line
    code, out, err = cli(capsys, "data", "check", "voc2012", "--root", str(root), "--split", "train")
    assert code != 0 and "Traceback" not in err and "line 2: '../../../../../outside/evil' points outside" in out + err


@needs_shared
def test_a_coco_file_name_leaving_the_root_is_refused(capsys, tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (root / split).symlink_to(COCO / split, target_is_directory=True)
    data = json.loads((COCO / "annotations" / "instances_val2017.json").read_text())
    image = data["images"][1]
    image["file_name"] = "../train2017/" + image["file_name"]
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    shutil.copy(COCO / "annotations" / "instances_train2017.json", root / "annotations")
    line = refused(capsys, tmp_path, "run", "--method", "weldon", "--dataset", "coco", "--recipe", "quick",
                   "--root", str(root), "-q", watch=[root])
    assert f"instances_val2017.json: image {image['id']} file_name: '../train2017/" in line
    assert "points outside" in line


def test_a_mit67_entry_or_a_symlinked_folder_leaving_the_root_is_refused(tmp_path):
    from segbench.data.files import check_inside
    from segbench.errors import DataError

    images = tmp_path / "Images"
    (images / "kitchen").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (images / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    listing = tmp_path / "TrainImages.txt"
    listing.write_text("kitchen/a.jpg\nkitchen/../../b.jpg\n")
    check_inside(["kitchen/a.jpg", "mall/shopping mall.jpg"], images, listing, "entry")  # fine
    with pytest.raises(DataError, match=r"TrainImages.txt: line 2: 'kitchen/../../b.jpg' points outside"):
        check_inside(["kitchen/a.jpg", "kitchen/../../b.jpg"], images, listing, "entry")
    with pytest.raises(DataError, match="points outside"):
        check_inside(["escape/c.jpg"], images, listing, "entry")
    with pytest.raises(DataError, match="points outside"):
        check_inside(["/etc/passwd"], images, listing, "entry")


def test_a_missing_runs_directory_is_named_as_such(capsys, tmp_path):
    missing = tmp_path / "no-such-runs"
    for args in (("leaderboard",), ("show", "abc123", "-o", str(tmp_path / "x.png")), ("eval", "abc123")):
        code, out, err = cli(capsys, *args, "--runs-dir", str(missing))
        assert code != 0 and f"runs directory {missing} does not exist" in err and "Traceback" not in err, args
    assert not missing.exists()
    code, out, err = cli(capsys, "leaderboard", "--runs-dir", str(missing), "--published")  # the papers alone
    assert code == 0 and "(paper" in out


@needs_shared
def test_coco_eval_of_an_empty_results_list_warns(capsys, tmp_path):
    (tmp_path / "empty.json").write_text("[]")
    code, out, err = cli(capsys, "coco-eval", "--gt", str(COCO / "annotations" / "instances_val2017.json"),
                         "--results", str(tmp_path / "empty.json"), "--iou-type", "bbox")
    assert code == 0 and "holds no detections" in err and "type=bbox" in out


def test_a_finished_run_says_what_to_do_next(capsys, tmp_path):
    code, out, err = cli(capsys, "run", "--method", "weldon", *TINY, "--set", "batch_size=2", "--runs-dir",
                         str(tmp_path / "runs"))
    assert code == 0
    run_id = json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text())["run_id"]
    assert f"next: segbench leaderboard --runs-dir {tmp_path / 'runs'}" in err
    assert f"segbench show {run_id}" in err and f"segbench eval {run_id}" in err


def test_a_full_disk_while_writing_a_checkpoint_is_one_line_with_the_path(capsys, tmp_path, monkeypatch):
    """torch reports ENOSPC as an internal RuntimeError; the user sees the path and "No space left on device"."""
    import collections

    import torch

    from segbench.engine import checkpoint

    def full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda path: usage(100, 100, 0))
    code, out, err = cli(capsys, "run", "--method", "weldon", *TINY, "--set", "batch_size=2", "--set",
                         "checkpoint_every=1", "--runs-dir", str(tmp_path / "runs"))
    lines = [line for line in err.strip().splitlines() if line]
    assert code != 0 and "Traceback" not in err
    assert "cannot write" in lines[-1] and "step-00000001: No space left on device" in lines[-1]
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    assert record["status"] == "failed" and "No space left on device" in record["error"]


def test_a_running_record_whose_process_is_gone_is_stale_and_the_next_run_resumes_it(capsys, tmp_path):
    from segbench.engine.checkpoint import RunLock, run_state, state_dir
    from segbench.engine.config import parse_overrides
    from segbench.engine.run import run_experiment
    from segbench.results.store import RunStore

    runs = tmp_path / "runs"
    overrides = parse_overrides([TINY[i + 1] for i in range(0, len(TINY) - 1, 2)] + ["batch_size=2"])
    done = run_experiment("weldon", "shapes", overrides=overrides, runs=runs, progress=False).record
    store = RunStore(runs)
    record = store.get(done["run_id"])
    record.status, record.finished_at = "running", None  # as a killed process leaves it
    store.write(record)
    assert run_state(record, store.path_for(record.run_id)) == "stale"
    lock = RunLock.acquire(state_dir(store.path_for(record.run_id)))  # a live process holds it
    assert run_state(record, store.path_for(record.run_id)) == "running"
    lock.release()
    code, out, err = cli(capsys, "leaderboard", "--runs-dir", str(runs))
    assert code != 0 and "no finished runs" in err  # the only run is not finished any more
    assert f"note: 1 stale run not in the table: {record.run_id} (its process is gone" in err
    again = run_experiment("weldon", "shapes", overrides=overrides, runs=runs, progress=False)
    assert again.record["run_id"] == record.run_id and again.record["status"] == "finished"
    assert again.record["resumes"][-1]["previous_status"] == "running"


# -- the cases that already answered well: kept so that they stay so ---------------------------------------------
@pytest.mark.parametrize("args, message", [
    (("run", "--method", "nosuch"), "unknown method 'nosuch'; known: cam,"),
    (("run", "--method", "weldon", "--dataset", "nosuch"), "unknown dataset 'nosuch'; known: coco,"),
    (("run", "--method", "weldon", "--recipe", "nosuch"), "unknown recipe of method 'weldon' 'nosuch'"),
    (("run", "--method", "weldon", "--metrics", "nosuch"), "unknown metric 'nosuch'; known: accuracy,"),
    (("run", "--method", "fcn8s", "--dataset", "voc2007", "--root", "/nonexistent"),
     "method 'fcn8s' learns from pixel-level annotations"),
])
def test_unknown_names_and_impossible_pairings(capsys, tmp_path, args, message):
    assert message in refused(capsys, tmp_path, *args)


@needs_shared
@pytest.mark.parametrize("results, message", [
    ('[{"image_id": 999999999, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.5}]',
     "result 0 (image_id 999999999, category_id 1) has an image_id that is not in"),
    ('[{"image_id": 6818, "category_id": 1, "bbox": [0, 0, 10, 10], "score": NaN}]',
     "result 0 (image_id 6818, category_id 1) has score nan, not a finite number"),
    ('{"images": [', "is not JSON"),
])
def test_bad_coco_results(capsys, tmp_path, results, message):
    path = tmp_path / "results.json"
    path.write_text(results)
    line = refused(capsys, tmp_path, "coco-eval", "--gt", str(COCO / "annotations" / "instances_val2017.json"),
                   "--results", str(path), "--iou-type", "bbox", watch=[tmp_path])
    assert message in line


@needs_shared
@pytest.mark.parametrize("damage, message", [
    ("truncated_jpeg", "2007_000033.jpg"),
    ("malformed_xml", "2007_000033.xml"),
])
def test_damaged_voc_files_are_named(capsys, tmp_path, damage, message):
    root = tmp_path / "voc"
    voc = root / "VOCdevkit" / "VOC2012"
    voc.mkdir(parents=True)
    for sub in ("ImageSets", "SegmentationClass", "SegmentationObject", "JPEGImages", "Annotations"):
        (shutil.copytree if sub in ("ImageSets", "JPEGImages", "Annotations") else
         lambda a, b: b.symlink_to(a, target_is_directory=True))(VOC12 / sub, voc / sub)
    if damage == "truncated_jpeg":
        jpeg = voc / "JPEGImages" / "2007_000033.jpg"
        jpeg.write_bytes(jpeg.read_bytes()[:2000])
    else:
        (voc / "Annotations" / "2007_000033.xml").write_text("<annotation><object><name>cat</name>")
    line = refused(capsys, tmp_path, "run", "--method", "fcn8s", "--dataset", "voc2012", "--recipe", "quick",
                   "--root", str(root), "-q", watch=[root])
    assert message in line


def test_a_corrupt_record_is_skipped_with_a_warning_naming_it(capsys, tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "0123456789abcdef.json").write_text('{"schema_version": 1')
    code, out, err = cli(capsys, "leaderboard", "--runs-dir", str(runs))
    assert code != 0 and "Traceback" not in err
    assert f"skipping {runs / '0123456789abcdef.json'}: not valid JSON" in err
    assert (runs / "0123456789abcdef.json").read_text() == '{"schema_version": 1'  # never rewritten or removed


# -- datasets from files (issue 16): a folder of images and masks -------------------------------------------------
def tiny_folder(root: Path, n: int = 6) -> Path:
    """images/ (8x6 PNGs), masks/ (grey, classes 0..2 and a void pixel) and classes.txt."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for k in range(n):
        Image.fromarray(np.full((6, 8, 3), 40 * k, np.uint8)).save(root / "images" / f"im{k}.png")
        mask = np.zeros((6, 8), np.uint8)
        mask[1:4, 2:6], mask[0, 0] = 1 + k % 2, 255
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{k}.png")
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    return root


def damage_folder(root: Path, damage: str) -> str:
    """Break the folder in one way; returns what the one error line must say."""
    if damage == "orphan_masks":
        for k in range(4):
            shutil.copy(root / "masks" / "im0.png", root / "masks" / f"lost{k}.png")
        return "4 mask(s) match no image in images/: lost0.png, lost1.png, lost2.png (and 1 more)"
    if damage == "duplicate_class":
        (root / "classes.txt").write_text("background\ncat\ndog\ncat\n")
        return f"{root / 'classes.txt'}: line 4: class 'cat' repeats line 2"
    if damage == "undecodable_image":
        (root / "images" / "im3.png").write_bytes(b"not a picture")
        return f"{root / 'images' / 'im3.png'}: image does not open"
    if damage == "split_outside_root":
        (root / "splits").mkdir()
        (root / "splits" / "train.txt").write_text("im0\nim1\n")
        (root / "splits" / "val.txt").write_text("im2\n../../etc/passwd\n")
        return f"{root / 'splits' / 'val.txt'}: line 2: '../../etc/passwd' points outside"
    if damage == "empty_images":
        for path in (root / "images").iterdir():
            path.unlink()
        for path in (root / "masks").iterdir():
            path.unlink()
        return f"{root / 'images'}: no images"
    if damage == "missing_test_list":
        return f"{root / 'splits' / 'test.txt'}: missing file"
    raise AssertionError(damage)


@pytest.mark.parametrize("damage", ["orphan_masks", "duplicate_class", "undecodable_image", "split_outside_root",
                                    "empty_images", "missing_test_list"])
def test_a_broken_folder_dataset_is_one_line_naming_the_file(capsys, tmp_path, damage):
    root = tiny_folder(tmp_path / "data")
    message = damage_folder(root, damage)
    split = ["--split", "test"] if damage == "missing_test_list" else []
    line = refused(capsys, tmp_path, "run", "--method", "weldon", "--dataset", "folder", "--root", str(root),
                   "--recipe", "quick", "--set", "steps=1", "-q", *split, watch=[root])
    assert message in line


def test_a_folder_mask_value_outside_the_classes_names_file_and_value(capsys, tmp_path):
    import numpy as np
    from PIL import Image

    root = tiny_folder(tmp_path / "data")
    mask = np.array(Image.open(root / "masks" / "im4.png"))
    mask[5, 7] = 7
    Image.fromarray(mask, mode="L").save(root / "masks" / "im4.png")
    before = snapshot(root)
    code, out, err = cli(capsys, "data", "check", "folder", "--root", str(root))
    assert code == 1 and "Traceback" not in err and snapshot(root) == before
    assert f"error: {root / 'masks' / 'im4.png'}: mask has value 7 outside the classes 0..2 and 255" in out


@pytest.mark.parametrize("args, message", [
    (("--dataset", "coco_format"), "dataset 'coco_format' needs --set annotations=FILE"),
    (("--dataset", "coco_format", "--set", "annotations=/nonexistent/a.json", "--set", "images=/nonexistent"),
     "/nonexistent/a.json: no such file (option annotations of coco_format)"),
    (("--dataset", "voc_format", "--root", "/nonexistent"), "/nonexistent: no such directory"),
    (("--dataset", "folder", "--set", "void=300", "--root", "/nonexistent"),
     "dataset 'folder': option void must be a mask value 0..255, got 300"),
])
def test_datasets_from_files_refuse_missing_options_and_files_in_one_line(capsys, tmp_path, args, message):
    assert message in refused(capsys, tmp_path, "run", "--method", "weldon", "--recipe", "quick", *args, "-q")


# -- config files (issue 15): segbench run --config FILE / --from RUN_ID ------------------------------------------
BASE = "method: weldon\ntrain: {steps: 1, batch_size: 2}\ndata: {image_size: 32, num_train: 4, num_val: 2}\n"


@pytest.mark.parametrize("files, message", [
    ({"run.yaml": "method: weldon\ntrain: {steps: [1, 2\n"}, "run.yaml: line 3: not valid YAML (did not find "
                                                             "expected ',' or ']')"),
    ({"run.yaml": "method: weldon\nmethod: cam\n"}, "run.yaml: line 2: not valid YAML (found duplicate key method)"),
    ({"run.yaml": "base: a.yaml\n", "a.yaml": "base: run.yaml\n"}, "a.yaml: base cycle {d}/run.yaml -> {d}/a.yaml "
                                                                   "-> {d}/run.yaml"),
    ({"run.yaml": "base: [base.yaml, gone.yaml]\n", "base.yaml": BASE},
     "run.yaml: base file {d}/gone.yaml does not exist"),
    ({"run.yaml": "base: base.yaml\ntrian: {lr: 0.1}\n", "base.yaml": BASE},
     "run.yaml: unknown key 'trian'; did you mean train"),
    ({"run.yaml": "base: base.yaml\ninit: abc\n", "base.yaml": BASE}, "run.yaml: unknown key 'init'; did you mean "
                                                                      "train.init?"),
    ({"run.yaml": "base: base.yaml\nmodel: {kmx: 2}\n", "base.yaml": BASE},
     "run.yaml: unknown key 'model.kmx'; did you mean kmax, kmin?"),
    ({"run.yaml": "base: base.yaml\nmetrics: {loc_map: {tolerence: 2}}\n", "base.yaml": BASE},
     "run.yaml: unknown key 'metrics.loc_map.tolerence'; did you mean tolerance, confidence?"),
    ({"run.yaml": "base: base.yaml\nmetrics: [locmap]\n", "base.yaml": BASE},
     "run.yaml: unknown metric 'locmap'; did you mean 'loc_map'"),
    ({"run.yaml": "base: base.yaml\n", "base.yaml": BASE.replace("steps: 1", "steps: abc")},
     "base.yaml: train.steps expects an integer, got 'abc'"),
    ({"run.yaml": "base: base.yaml\ntrain: {lr: -1}\n", "base.yaml": BASE},
     "run.yaml: lr must be a positive finite number, got -1.0"),
    ({"run.yaml": "base: base.yaml\nseed: one\n", "base.yaml": BASE}, "run.yaml: seed expects an integer, got 'one'"),
    ({"run.yaml": "base: base.yaml\ntrain: {steps: '${nope}'}\n", "base.yaml": BASE},
     "run.yaml: Interpolation key 'nope' not found"),
    ({}, "run.yaml: no such config file"),
])
def test_a_bad_config_file_is_one_line_naming_the_file(capsys, tmp_path, files, message):
    folder = tmp_path / "cfg"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    line = refused(capsys, tmp_path, "run", "--config", str(folder / "run.yaml"), "-q", watch=[folder])
    assert message.format(d=folder) in line


def test_from_an_unknown_run_is_one_line(capsys, tmp_path):
    (tmp_path / "runs").mkdir()
    line = refused(capsys, tmp_path, "run", "--from", "0123456789abcdef", "-q")
    assert line == f"Error: --from 0123456789abcdef: no run record '0123456789abcdef' in {tmp_path / 'runs'}"
    code, out, err = cli(capsys, "config", "0123456789abcdef", "--runs-dir", str(tmp_path / "runs"))
    assert code != 0 and out == "" and err.strip() == f"Error: no run record '0123456789abcdef' in {tmp_path / 'runs'}"
