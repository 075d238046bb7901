"""``segbench predict``: label-map PNGs, score maps, overlays and COCO results of a finished run on image files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from segbench.data.export import voc_palette
from segbench.testing.cli import run_cli

TINY = ["--set", "steps=2", "--set", "image_size=32", "--set", "num_train=4", "--set", "num_val=4",
        "--set", "batch_size=4", "-q"]
SIZES = {"a": (37, 53), "b": (64, 41), "c": (29, 30)}  # (H, W), odd on purpose
CLASSES = 7  # shapes


def _run(capsys, runs, method, *extra):
    code, out, err = run_cli(capsys, "run", "--method", method, *TINY, *extra, "--runs-dir", str(runs))
    assert code == 0, err
    return json.loads(next(p for p in sorted(runs.glob("*.json"))).read_text())["run_id"]


@pytest.fixture(scope="module")
def weldon(tmp_path_factory):
    """A tiny WELDON run (image-supervised: its label maps come from the class-map rule) and odd-sized images."""
    root = tmp_path_factory.mktemp("predict")
    runs, images = root / "runs", root / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, (h, w) in SIZES.items():
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(images / f"{name}.png")
    Image.fromarray(rng.integers(0, 255, (31, 45, 3), dtype=np.uint8)).save(images / "d.jpg")
    from segbench.engine.config import parse_overrides
    from segbench.engine.run import run_experiment

    overrides = parse_overrides([TINY[i + 1] for i in range(0, len(TINY) - 1, 2)])
    outcome = run_experiment("weldon", "shapes", overrides=overrides, runs=runs, progress=False)
    return outcome.record["run_id"], runs, images


def predict(capsys, run_id, runs, *args):
    return run_cli(capsys, "predict", run_id, *args, "--runs-dir", str(runs), "-q")


def test_label_maps_are_palette_pngs_of_each_input_size(weldon, capsys, tmp_path):
    run_id, runs, images = weldon
    code, out, err = predict(capsys, run_id, runs, str(images), "-o", str(tmp_path / "out"), "--batch-size", "3")
    assert code == 0, err
    assert "wrote 4 files for 4 images" in out
    sizes = {**SIZES, "d": (31, 45)}
    for name, (h, w) in sizes.items():
        with Image.open(tmp_path / "out" / f"{name}.png") as png:
            assert png.mode == "P" and png.size == (w, h)
            assert png.getpalette()[:3 * CLASSES] == voc_palette()[:3 * CLASSES]
            values = np.array(png)
        assert values.shape == (h, w) and values.max() < CLASSES
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png", "d.png"]


def test_label_map_equals_the_evaluation_path(weldon, capsys, tmp_path):
    """A shapes evaluation image written as a PNG: predict's label map is the one evaluate() hands the metrics."""
    from segbench.api import create_dataset
    from segbench.engine.config import resolve_config
    from segbench.engine.data import make_loader
    from segbench.engine.evaluate import evaluate
    from segbench.engine.reeval import build_run_model
    from segbench.engine.run import postprocess_chain, postprocess_objects
    from segbench.plugins import get_registry
    from segbench.results.store import RunStore

    run_id, runs, _ = weldon
    store = RunStore(runs)
    record = store.get(run_id).to_dict()
    registry = get_registry()
    method, dataset = registry.method("weldon"), registry.dataset("shapes")
    data = create_dataset("shapes", "val", **record["config"]["data"])
    chain, _ = postprocess_chain(method, dataset, registry, [])
    config = resolve_config(method, dataset, {}, record["recipe"], {}, chain)
    post = postprocess_objects(chain, config, method, dataset)

    class Capture:  # a metric that keeps the label maps it is given
        masks: list = []

        def reset(self):
            self.masks = []

        def update(self, predictions, targets):
            self.masks += [p["mask"] for p in predictions]

        def compute(self):
            return {}

    capture = Capture()
    model = build_run_model(method, dataset.num_classes, store, record)
    evaluate(model, make_loader(data, 2, shuffle=False, seed=0), {"capture": capture}, torch.device("cpu"),
             dataset.mean, dataset.std, progress=False, postprocessors=post)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(2):
        Image.fromarray(data[k]["image"].permute(1, 2, 0).numpy()).save(folder / f"val{k}.png")
    code, _, err = predict(capsys, run_id, runs, str(folder / "*.png"), "-o", str(tmp_path / "out"))
    assert code == 0, err
    for k in range(2):
        got = torch.from_numpy(np.array(Image.open(tmp_path / "out" / f"val{k}.png")).astype(np.int64))
        assert torch.equal(got, capture.masks[k])
    assert all(len(m.unique()) > 1 for m in capture.masks[:2])  # not a blank map on both sides


def test_score_maps_and_overlays(weldon, capsys, tmp_path):
    run_id, runs, images = weldon
    out = tmp_path / "out"
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), str(images / "b.png"), "-o", str(out),
                           "--score-maps", "--overlay")
    assert code == 0, err
    for name in ("a", "b"):
        h, w = SIZES[name]
        arrays = np.load(out / "score_maps" / f"{name}.npz")
        assert arrays["score_maps"].shape == (CLASSES, h, w) and arrays["score_maps"].dtype == np.float16
        assert arrays["scores"].shape == (CLASSES,) and arrays["scores"].dtype == np.float16
        assert list(arrays["classes"])[:2] == ["background", "disc"]
        assert np.isfinite(arrays["score_maps"]).all()
        with Image.open(out / "overlays" / f"{name}.png") as png:
            assert png.mode == "RGB" and png.size == (w, h)
            drawn = np.array(png)
        labels = np.array(Image.open(out / f"{name}.png"))
        original = np.array(Image.open(images / f"{name}.png"))
        assert (drawn[labels == 0] == original[labels == 0]).all()  # the background is left clear
        assert (drawn[labels > 0] != original[labels > 0]).any() or not (labels > 0).any()


def test_tta_option_changes_the_score_maps(weldon, capsys, tmp_path):
    run_id, runs, images = weldon
    for name, extra in (("plain", []), ("flip", ["--tta", "flip"])):
        code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), "-o", str(tmp_path / name),
                               "--score-maps", *extra)
        assert code == 0, err
    plain, flip = (np.load(tmp_path / n / "score_maps" / "a.npz")["score_maps"] for n in ("plain", "flip"))
    assert plain.shape == flip.shape and not np.allclose(plain, flip)
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), "-o", str(tmp_path / "slide"),
                           "--slide", "24,16")
    assert code == 0, err
    assert Image.open(tmp_path / "slide" / "a.png").size == (53, 37)
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), "-o", str(tmp_path / "x"), "--tta", "ms:0")
    assert code == 2 and err.count("\n") == 1 and "scale '0' is not a positive number" in err


def test_existing_outputs_are_refused_without_force(weldon, capsys, tmp_path):
    run_id, runs, images = weldon
    out = tmp_path / "out"
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), "-o", str(out))
    assert code == 0, err
    (out / "a.png").write_bytes(b"mine")
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), str(images / "b.png"), "-o", str(out))
    assert code == 2 and err == f"Error: {out / 'a.png'} already exists; use --force to overwrite it\n"
    assert (out / "a.png").read_bytes() == b"mine" and not (out / "b.png").exists()
    code, _, err = predict(capsys, run_id, runs, str(images / "a.png"), "-o", str(out), "--force")
    assert code == 0, err
    assert Image.open(out / "a.png").size == (53, 37)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_bad_inputs_are_one_line_errors_and_write_nothing(weldon, capsys, tmp_path):
    run_id, runs, images = weldon
    broken = tmp_path / "broken"
    shutil.copytree(images, broken)
    (broken / "z.jpg").write_bytes(b"\xff\xd8 not a jpeg")  # sorted last: the others were predicted before it
    empty = tmp_path / "empty"
    empty.mkdir()
    unfinished, no_weights = tmp_path / "unfinished", tmp_path / "no_weights"
    for copy in (unfinished, no_weights):
        shutil.copytree(runs, copy)
    record = json.loads((unfinished / f"{run_id}.json").read_text())
    (unfinished / f"{run_id}.json").write_text(json.dumps({**record, "status": "running"}))
    (no_weights / record["weights"]).unlink()
    out = tmp_path / "out"
    cases = [
        ((str(broken),), runs, f"{broken / 'z.jpg'}: "),
        ((str(tmp_path / "missing.png"),), runs, f"{tmp_path / 'missing.png'}: no such file or folder"),
        ((str(empty),), runs, f"{empty}: no images in this folder"),
        ((str(tmp_path / "*.webp"),), runs, "no images match this pattern"),
        ((str(images),), unfinished, f"run '{run_id}' has status 'running'"),
        ((str(images),), no_weights, f"{no_weights / record['weights']}: weights of run '{run_id}' are missing"),
    ]
    for paths, where, message in cases:
        code, _, err = predict(capsys, run_id, where, *paths, "-o", str(out))
        assert code != 0 and err.count("\n") == 1 and message in err and "Traceback" not in err, (message, err)
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "empty", "no_weights", "unfinished"]


def test_instance_method_writes_coco_results_that_pycocotools_and_coco_eval_read(capsys, tmp_path):
    from pycocotools.coco import COCO

    runs = tmp_path / "runs"
    run_id = _run(capsys, runs, "mask_rcnn", "--set", "image_size=48", "--set", "num_val=3",
                  "--set", "batch_size=2")
    code, _, err = run_cli(capsys, "data", "export", "shapes", "--format", "coco", "--out", str(tmp_path / "coco"),
                           "--set", "image_size=48", "--set", "num_val=3")
    assert code == 0, err
    gt = tmp_path / "coco" / "annotations" / "instances_val2017.json"
    code, _, err = predict(capsys, run_id, runs, str(tmp_path / "coco" / "val2017"), "-o", str(tmp_path / "out"),
                           "--coco-gt", str(gt))
    assert code == 0, err
    results = json.loads((tmp_path / "out" / "instances.json").read_text())
    assert results and {r["image_id"] for r in results} <= {1, 2, 3}
    assert all(r["segmentation"]["size"] == [48, 48] and isinstance(r["segmentation"]["counts"], str)
               for r in results)
    detections = COCO(str(gt)).loadRes(str(tmp_path / "out" / "instances.json"))
    assert len(detections.anns) == len(results)
    code, out, err = run_cli(capsys, "coco-eval", "--gt", str(gt), "--results", str(tmp_path / "out" /
                                                                                   "instances.json"))
    assert code == 0, err
    assert "type=segm" in out and "type=bbox" in out
    assert Image.open(tmp_path / "out" / "val_000000.png").size == (48, 48)  # mask_rcnn's label map too
    code, _, err = predict(capsys, run_id, runs, str(tmp_path / "coco" / "val2017"), "-o", str(tmp_path / "x"),
                           "--tta", "flip")
    assert code == 2 and "method 'mask_rcnn' predicts instances" in err and err.count("\n") == 1
