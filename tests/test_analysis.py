"""Analysis: per-class leaderboards, the recorded confusion matrix and its figure, predictions beside the
ground truth, and ``segbench compare``."""

from __future__ import annotations

import dataclasses
import io
import json
import math

import pandas as pd
import pytest
import torch

from segbench.compare import compare_records, image_iou
from segbench.errors import ConfigError
from segbench.results.leaderboard import LeaderboardError, build_leaderboard, build_per_class
from segbench.results.record import RecordError, RunRecord, make_config_id, make_run_id
from segbench.show import PANEL, Palette, class_colours, confusion_layout, most_confused
from segbench.testing.cli import run_cli

TINY = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 6, "image_size": 48}
CLASSES = ["background", "cat", "dog", "bird"]


def record(seed=0, recipe="bench", method="wildcat", dataset="voc2012", per_class=None, metrics=None,
           classes=CLASSES) -> RunRecord:
    config = {"method": method, "dataset": dataset, "recipe": recipe, "train": {}, "model": {}, "data": {},
              "metrics": {}}
    config_id = make_config_id(config, "ab" * 8, {"segbench": "0.1.0", "plugins": {}}, split="val")
    return RunRecord(
        run_id=make_run_id(config_id, seed), config_id=config_id, status="finished", method=method,
        dataset=dataset, split="val", recipe=recipe, seed=seed, config=config,
        dataset_identity={"name": dataset, "split": "val", "fingerprint": "ab" * 8},
        metrics=metrics or {}, per_class=per_class or {}, class_names=list(classes),
        created_at="2025-01-01T00:00:00+00:00", finished_at=f"2025-01-01T00:0{seed}:00+00:00",
    )


def miou_record(seed, values, recipe="bench", **kw) -> RunRecord:
    per_class = dict(zip(CLASSES, values))
    present = [v for v in values if v is not None]
    return record(seed, recipe, per_class={"miou": per_class, "cls_map": {"background": None, "cat": 0.9,
                                                                           "dog": 0.5, "bird": None}},
                  metrics={"miou": sum(present) / len(present), "cls_map": 0.7}, **kw)


# -- per-class leaderboard ---------------------------------------------------------------------------------
def test_per_class_table_is_the_mean_over_seeds_of_each_class_labelled_as_the_main_table():
    runs = [miou_record(0, [0.9, 0.5, 0.2, None]), miou_record(1, [0.7, 0.6, 0.4, None]),
            miou_record(0, [0.8, 0.1, 0.0, None], recipe="quick")]
    board = build_per_class(runs)  # auto: miou
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "background", "cat", "dog", "miou"]  # bird: no value in any run
    assert list(frame["Method"]) == list(build_leaderboard(runs, metric="miou").display_frame()["Method"])
    bench = frame[frame["Method"] == "WILDCAT (bench)"].iloc[0]
    # cat: mean(0.5, 0.6) = 0.55, sample std |0.5 - 0.6| / sqrt(2) = 0.0707
    assert bench["cat"] == "55.0 \u00b1 7.1 (2)" and bench["background"] == "80.0 \u00b1 14.1 (2)"
    assert bench["miou"] == f"{100 * (1.6 / 3 + 1.7 / 3) / 2:.1f} \u00b1 {100 * abs(1.6 - 1.7) / 3 / math.sqrt(2):.1f} (2)"
    quick = frame[frame["Method"] == "WILDCAT (quick)"].iloc[0]
    assert quick["dog"] == "0.0" and quick["cat"] == "10.0"
    assert "Per-class IoU (miou)" in board.caption
    numbers = pd.read_csv(io.StringIO(board.render("csv")))
    assert numbers.loc[numbers["Method"] == "WILDCAT (bench)", "dog"].item() == pytest.approx(30.0)
    assert numbers.loc[numbers["Method"] == "WILDCAT (bench)", "dog n"].item() == 2


def test_per_class_follows_the_metric_and_refuses_mixed_class_lists():
    runs = [miou_record(0, [0.9, 0.5, 0.2, None]), miou_record(1, [0.7, 0.6, 0.4, None])]
    board = build_per_class(runs, "cls_map")
    assert board.columns == ["cat", "dog", "cls_map"] and "Per-class AP (cls_map)" in board.caption
    assert board.display_frame()["dog"].item() == "50.0 \u00b1 0.0 (2)"
    with pytest.raises(ConfigError, match="no finished run has per-class values for 'pixel_acc'"):
        build_per_class(runs, "pixel_acc")
    other = record(method="cam", dataset="coco", per_class={"miou": {"person": 0.3}}, classes=["person"])
    with pytest.raises(LeaderboardError, match="one class list.*--dataset"):
        build_per_class(runs + [other])
    assert build_per_class(runs + [other], dataset="coco").columns == ["person"]


def test_per_class_cli_writes_every_format_by_suffix(tmp_path, capsys):
    from segbench.results.store import RunStore

    store = RunStore(tmp_path / "runs")
    for r in (miou_record(0, [0.9, 0.5, 0.2, None]), miou_record(1, [0.7, 0.6, 0.4, None])):
        store.write(r)
    for name, mark in (("t.md", "| WILDCAT "), ("t.csv", "Method,background,background std"),
                       ("t.tex", r"\toprule")):
        code, _, err = run_cli(capsys, "leaderboard", "--per-class", "--runs-dir", str(store.root),
                               "-o", str(tmp_path / name))
        assert code == 0, err
        assert mark in (tmp_path / name).read_text()
    code, _, err = run_cli(capsys, "leaderboard", "--per-class", "--published", "--runs-dir", str(store.root))
    assert code != 0 and err.count("\n") == 1 and "drop --published" in err


# -- the confusion field -----------------------------------------------------------------------------------
def test_confusion_field_is_validated_and_older_records_load():
    good = miou_record(0, [0.9, 0.5, 0.2, None]).to_dict()
    del good["confusion"]
    assert RunRecord.from_dict(good).confusion == {}  # written before the field: loads, empty
    good["confusion"] = {"miou": [[5, 1, 0, 0], [0, 2, 0, 0], [0, 0, 3, 0], [0, 0, 0, 0]]}
    assert RunRecord.from_dict(good).to_dict()["confusion"] == good["confusion"]
    for bad, message in (([[1, 2], [3, 4]], "has 2 rows for 4 classes"),
                         ([[1, 2, 3, 4]] * 3 + [[1, 2]], "must be square"),
                         ([[1, -2, 0, 0]] * 4, "must hold non-negative integer"),
                         ([[1.5, 0, 0, 0]] * 4, "must hold non-negative integer"),
                         ("x", "must be a list of rows")):
        with pytest.raises(RecordError, match=f"r.json: confusion 'miou' {message}"):
            RunRecord.from_dict({**good, "confusion": {"miou": bad}}, "r.json")


def test_most_confused_takes_both_ends_of_the_largest_off_diagonal_shares():
    matrix = torch.eye(8, dtype=torch.int64) * 100
    matrix[3, 5] = 80  # 80 / 180 of class 3's pixels go to 5
    matrix[7, 2] = 30  # 30 / 130
    matrix[1, 0] = 1
    assert most_confused(matrix, 4) == [2, 3, 5, 7]
    assert most_confused(matrix, 3) == [3, 5, 7]  # the ground-truth end of a pair first
    assert confusion_layout(81)[0] > confusion_layout(21)[0] >= 5 and confusion_layout(81)[1] >= 7


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two tiny runs on the same shapes data: U-Net (which already predicts several classes) and FCN-8s."""
    from segbench.engine.run import run_experiment

    root = tmp_path_factory.mktemp("runs")
    a = run_experiment("unet", "shapes", overrides=TINY, runs=root, progress=False).record
    b = run_experiment("fcn8s", "shapes", overrides=TINY, runs=root, progress=False).record
    return root, a, b


def test_recorded_confusion_matrix_equals_torchmetrics_on_the_same_predictions(two_runs):
    from torchmetrics.classification import MulticlassConfusionMatrix

    from segbench.show import eval_data, load_run, predict, run_postprocessors

    root, a, _ = two_runs
    run = load_run(a["run_id"], root)
    data = eval_data(run)
    reference = MulticlassConfusionMatrix(num_classes=7, ignore_index=255)
    void = 0
    for sample, _, prediction in predict(run, data, range(len(data)), run_postprocessors(run)):
        target = sample["target"]["mask"].as_subclass(torch.Tensor).long()
        reference.update(prediction["mask"][None], target[None])
        void += int((target == 255).sum())
    matrix = torch.tensor(a["confusion"]["miou"])
    assert torch.equal(matrix, reference.compute().long())
    assert (matrix.sum(0) > 0).sum() >= 3  # predictions of several classes: a matrix worth checking
    assert int(matrix.sum()) == len(data) * 48 * 48 - void > 0  # void pixels left out
    tp = matrix.diagonal().double()
    iou = tp / (matrix.sum(0) + matrix.sum(1) - tp)
    assert float(iou.nanmean()) == pytest.approx(a["metrics"]["miou"], abs=1e-12)


def test_show_confusion_png_sizes_and_one_line_errors(two_runs, tmp_path, capsys):
    from PIL import Image

    root, a, _ = two_runs
    out = tmp_path / "cm.png"
    code, _, err = run_cli(capsys, "show", a["run_id"], "--confusion", "-o", str(out), "--runs-dir", str(root))
    assert code == 0, err
    with Image.open(out) as png:  # 7 classes: the smallest figure, 5 inches at 100 dpi
        assert png.format == "PNG" and png.size == (500, 500)
    many = tmp_path / "many"
    names = [f"c{i}" for i in range(21)]
    wide = {**a, "class_names": names, "confusion": {"miou": (torch.eye(21, dtype=torch.int64) * 9 + 1).tolist()}}
    many.mkdir()
    (many / f"{a['run_id']}.json").write_text(json.dumps(wide))
    code, _, err = run_cli(capsys, "show", a["run_id"], "--confusion", "-o", str(tmp_path / "21.png"),
                           "--runs-dir", str(many))
    side = round(100 * confusion_layout(21)[0])
    with Image.open(tmp_path / "21.png") as png:
        assert code == 0 and png.size == (side, side) == (880, 880)
    code, _, err = run_cli(capsys, "show", a["run_id"], "--confusion", "--top", "4", "-o", str(tmp_path / "4.png"),
                           "--runs-dir", str(many))
    with Image.open(tmp_path / "4.png") as png:  # the 4 classes of the most confused pairs: the smallest figure
        assert code == 0 and png.size == (500, 500)
    old = {k: v for k, v in a.items() if k != "confusion"}
    (many / f"{a['run_id']}.json").write_text(json.dumps(old))
    code, _, err = run_cli(capsys, "show", a["run_id"], "--confusion", "-o", str(tmp_path / "x.png"),
                           "--runs-dir", str(many))
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert "has no confusion matrix: its record was written before segbench kept them" in err
    (many / f"{a['run_id']}.json").write_text(json.dumps({**old, "metrics": {"cls_map": 0.5}}))
    code, _, err = run_cli(capsys, "show", a["run_id"], "--confusion", "-o", str(tmp_path / "x.png"),
                           "--runs-dir", str(many))
    assert code != 0 and err.count("\n") == 1 and "method 'unet' on 'shapes' has no miou" in err
    assert not (tmp_path / "x.png").exists()


# -- predictions -----------------------------------------------------------------------------------------
def test_label_maps_are_drawn_by_torchvision_in_the_class_colours():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[:2, :2] = 2
    mask[3, 3] = 255
    palette = Palette(["background", "a", "b"], background=0)
    drawn = palette.label_map(image, mask)
    colour = torch.tensor(class_colours(3)[2], dtype=torch.float)
    assert torch.allclose(drawn[:, 0, 0].float(), 0.6 * colour, atol=1)  # alpha 0.6 over black
    assert drawn[:, 2, 2].tolist() == [0, 0, 0]  # background: not drawn
    assert drawn[:, 3, 3].tolist() == [153, 153, 153]  # void: white at 0.6
    assert list(palette.used) == ["b", "void"]  # the legend


def test_show_predictions_png_for_label_maps(two_runs, tmp_path, capsys):
    from PIL import Image

    root, a, _ = two_runs
    out = tmp_path / "grid.png"
    code, _, err = run_cli(capsys, "show", a["run_id"], "--predictions", "--images", "2", "-o", str(out),
                           "--runs-dir", str(root))
    assert code == 0, err
    with Image.open(out) as png:  # 3 panels of 2.4 in, 2 rows + the legend, 100 dpi
        assert png.size == (round(300 * PANEL), round(200 * PANEL + 60))


def test_show_predictions_draws_mask_rcnn_instances(tmp_path, capsys):
    from PIL import Image

    from segbench.engine.run import run_experiment
    from segbench.show import instance_mode, load_run, truth_panel

    outcome = run_experiment("mask_rcnn", "shapes", overrides={**TINY, "batch_size": 2, "num_train": 4,
                                                               "num_val": 2, "image_size": 64},
                             runs=tmp_path, progress=False)
    run = load_run(outcome.record["run_id"], tmp_path)
    assert instance_mode(run)
    sample = __import__("segbench.show", fromlist=["eval_data"]).eval_data(run)[0]
    image = sample["image"].as_subclass(torch.Tensor)
    palette = Palette(list(run["dataset"].classes), run["dataset"].background)
    drawn = truth_panel(palette, image, sample["target"], instances=True)
    x1, y1 = sample["target"]["boxes"][0].int().tolist()[:2]
    assert not torch.equal(drawn[:, y1, x1], image[:, y1, x1])  # the first box's corner is drawn
    assert set(palette.used) == {run["dataset"].classes[int(c)] for c in sample["target"]["classes"]}
    out = tmp_path / "inst.png"
    code, _, err = run_cli(capsys, "show", outcome.record["run_id"], "--predictions", "--images", "2", "-o",
                           str(out), "--runs-dir", str(tmp_path), "--threshold", "0.0")
    with Image.open(out) as png:
        assert code == 0 and png.size == (round(300 * PANEL), round(200 * PANEL + 60))


# -- compare ----------------------------------------------------------------------------------------------
def test_image_iou_is_the_mean_iou_of_one_image():
    target = torch.tensor([[0, 0], [1, 255]])
    prediction = torch.tensor([[0, 1], [1, 1]])
    # class 0: tp 1, fn 1 -> 1/2; class 1: tp 1, fp 1 -> 1/2; the void pixel does not count
    assert image_iou(prediction, target, 3) == pytest.approx(0.5)


def test_image_differences_rank_every_image_by_the_iou_gap(two_runs):
    from segbench.compare import image_differences
    from segbench.show import eval_data, load_run, predict, run_postprocessors

    root, a, b = two_runs
    run_a, run_b = load_run(a["run_id"], root), load_run(b["run_id"], root)
    data = eval_data(run_a)
    found = image_differences(run_a, run_b, data, ([], run_postprocessors(run_b)), batch=4)
    assert sorted(index for index, _, _ in found) == list(range(len(data)))
    gaps = [abs(iou_b - iou_a) for _, iou_a, iou_b in found]
    assert gaps == sorted(gaps, reverse=True) and gaps[0] > 0
    index, iou_a, _ = found[0]
    (sample, _, prediction), = predict(run_a, data, [index])
    assert iou_a == image_iou(prediction["mask"], sample["target"]["mask"], 7)


def test_compare_numbers_are_the_hand_differences(two_runs):
    _, a, b = two_runs
    comparison = compare_records(a, b)
    metrics = comparison.metrics.set_index("metric")
    for key in a["metrics"]:
        if a["metrics"][key] is not None and b["metrics"][key] is not None:
            assert metrics.loc[key, "B - A"] == pytest.approx(b["metrics"][key] - a["metrics"][key], abs=1e-12)
    assert metrics.loc["miou", "B - A"] != 0  # the two runs differ
    per_class = comparison.per_class.set_index(["metric", "class"])
    for name, value in a["per_class"]["miou"].items():
        other = b["per_class"]["miou"][name]
        got = per_class.loc[("miou", name), "B - A"]
        assert math.isnan(got) if value is None else got == pytest.approx(other - value, abs=1e-12)


def test_compare_cli_tables_images_and_errors(two_runs, tmp_path, capsys):
    from PIL import Image

    root, a, b = two_runs
    out = tmp_path / "cmp"
    code, stdout, err = run_cli(capsys, "compare", a["run_id"], b["run_id"], "-o", str(out), "--images", "2",
                                "--runs-dir", str(root))
    assert code == 0, err
    assert stdout.startswith(f"A: {a['run_id']} unet (quick) on shapes/val") and "Per-class B - A (%)" in stdout
    assert stdout == (out / "compare.md").read_text()
    metrics = pd.read_csv(out / "metrics.csv").set_index("metric")
    assert metrics.loc["miou", "B - A"] == pytest.approx(b["metrics"]["miou"] - a["metrics"]["miou"], abs=1e-6)
    per_class = pd.read_csv(out / "per_class.csv")
    assert set(per_class["class"]) == set(a["class_names"])
    with Image.open(out / "differences.png") as png:  # image | GT | A | B, 2 rows + the legend
        assert png.size == (round(400 * PANEL), round(200 * PANEL + 60))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for r in (a, {**b, "dataset": "voc2012", "dataset_identity": {**b["dataset_identity"], "name": "voc2012"}}):
        (elsewhere / f"{r['run_id']}.json").write_text(json.dumps(r))
    code, _, err = run_cli(capsys, "compare", a["run_id"], b["run_id"], "--runs-dir", str(elsewhere))
    assert code != 0 and err.count("\n") == 1 and "Traceback" not in err
    assert "evaluated on shapes/val and voc2012/val: compare runs on the same dataset and split" in err
    other = dataclasses.replace(RunRecord.from_dict(b), dataset_identity={**b["dataset_identity"],
                                                                          "fingerprint": "cd" * 8})
    (elsewhere / f"{b['run_id']}.json").write_text(other.to_json())
    code, _, err = run_cli(capsys, "compare", a["run_id"], b["run_id"], "--runs-dir", str(elsewhere))
    assert code != 0 and err.count("\n") == 1 and "different data of shapes/val" in err
