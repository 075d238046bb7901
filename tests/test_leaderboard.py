"""Leaderboard numbers (mean/std/n over seeds), pooling rules, renderings and published references."""

from __future__ import annotations

import dataclasses
import io
import math
import statistics

import pandas as pd
import pytest

from segbench.errors import ConfigError
from segbench.results.leaderboard import (
    LeaderboardError, build_leaderboard, leaderboard, runs_frame, summary_frame, write_leaderboard,
)
from segbench.results.published import PublishedError, load_published, read_published
from segbench.results.record import RunRecord, make_config_id, make_run_id
from segbench.results.store import RunStore

VERSIONS = {"segbench": "0.1.0", "plugins": {}}
SEED_VALUES = [0.60, 0.62, 0.67]  # mean 0.63, sample std sqrt(0.0026 / 2) = 0.0360555


def rec(method="wildcat", dataset="voc2012", seed=0, metrics=None, status="finished", recipe="bench", lr=0.01,
        fingerprint="aa" * 8, split="val", finished_at="2025-01-01T00:10:00+00:00", run_id=None) -> RunRecord:
    config = {"method": method, "dataset": dataset, "recipe": recipe, "train": {"lr": lr}, "model": {}, "data": {},
              "metrics": {}}
    config_id = make_config_id(config, fingerprint, VERSIONS, split=split)
    return RunRecord(
        run_id=run_id or make_run_id(config_id, seed), config_id=config_id, status=status, method=method,
        dataset=dataset, split=split, recipe=recipe, seed=seed, config=config,
        dataset_identity={"name": dataset, "split": split, "fingerprint": fingerprint, "num_images": 4},
        metrics=metrics if metrics is not None else {"loc_map": 0.5}, created_at="2025-01-01T00:00:00+00:00",
        finished_at=finished_at if status == "finished" else None,
    )


def three_seeds(**kw) -> list[RunRecord]:
    return [rec(seed=s, metrics={"loc_map": v, "cls_map": 0.9}, **kw) for s, v in enumerate(SEED_VALUES)]


def cell(board, method_label, column):
    frame = board.display_frame()
    row = frame[frame["Method"] == method_label]
    assert len(row) == 1, frame
    return row.iloc[0][column]


# -- numbers -----------------------------------------------------------------------------------------
def test_mean_std_n_over_three_seeds_by_hand():
    summary = summary_frame(three_seeds())
    row = summary[summary["metric"] == "loc_map"].iloc[0]
    assert row["n"] == 3 and row["seeds"] == [0, 1, 2]
    assert row["mean"] == pytest.approx(0.63)
    assert row["std"] == pytest.approx(math.sqrt(0.0026 / 2))
    assert row["std"] == pytest.approx(statistics.stdev(SEED_VALUES))  # independent reference
    board = build_leaderboard(three_seeds(), metric="loc_map")
    assert board.columns == ["VOC 2012"]
    assert cell(board, "WILDCAT", "VOC 2012") == "63.0 \u00b1 3.6 (3)"
    fractions = build_leaderboard(three_seeds(), metric="loc_map", percent=False)
    assert cell(fractions, "WILDCAT", "VOC 2012") == "0.630 \u00b1 0.036 (3)"
    single = build_leaderboard([rec(metrics={"loc_map": 0.61234})], metric="loc_map")
    assert cell(single, "WILDCAT", "VOC 2012") == "61.2"  # n == 1: the mean alone


def test_failed_interrupted_and_running_runs_are_absent():
    others = [rec(seed=9, status=s, metrics={"loc_map": 0.99}) for s in ("failed", "interrupted", "running")]
    assert len(runs_frame(others)) == 0
    board = build_leaderboard(three_seeds() + others, metric="loc_map")
    assert cell(board, "WILDCAT", "VOC 2012") == "63.0 \u00b1 3.6 (3)"
    with pytest.raises(LeaderboardError, match="no finished runs"):
        build_leaderboard(others)


def test_duplicate_run_ids_and_forced_reruns_count_once_latest_wins():
    runs = three_seeds()
    copy = rec(seed=0, metrics={"loc_map": 0.60, "cls_map": 0.9})  # the same file read twice
    rerun = rec(seed=2, metrics={"loc_map": 0.64, "cls_map": 0.9}, finished_at="2025-02-01T00:00:00+00:00",
                run_id=runs[2].run_id + "-2")  # --force re-run of seed 2, newer
    summary = summary_frame(runs + [copy, rerun])
    row = summary[summary["metric"] == "loc_map"].iloc[0]
    assert row["n"] == 3
    assert row["mean"] == pytest.approx((0.60 + 0.62 + 0.64) / 3)
    assert row["std"] == pytest.approx(statistics.stdev([0.60, 0.62, 0.64]))


def test_different_configs_are_never_pooled_and_are_labelled():
    lr_runs = [rec(seed=s, lr=0.1, metrics={"loc_map": 0.2}) for s in range(2)]
    other_recipe = [rec(seed=0, recipe="quick", metrics={"loc_map": 0.3})]
    other_data = [rec(seed=0, fingerprint="bb" * 8, metrics={"loc_map": 0.4})]
    board = build_leaderboard(three_seeds() + lr_runs + other_recipe + other_data, metric="loc_map")
    frame = board.display_frame()
    labels = list(frame["Method"])
    assert len(labels) == 4 and len(set(labels)) == 4
    assert "WILDCAT (quick)" in labels  # the only quick config: no id needed
    bench = {label: value for label, value in zip(frame["Method"], frame["VOC 2012"]) if "bench" in label}
    assert sorted(bench.values()) == ["20.0 \u00b1 0.0 (2)", "40.0", "63.0 \u00b1 3.6 (3)"]
    for label in bench:  # "WILDCAT (bench, <config_id[:6]>)"
        assert label.startswith("WILDCAT (bench, ") and len(label) == len("WILDCAT (bench, 123456)")


def test_one_row_per_method_across_datasets_in_display_order():
    runs = three_seeds() + [rec(dataset="coco", metrics={"loc_map": 0.41}), rec(method="mynet", metrics={"loc_map": 0.1})]
    board = build_leaderboard(runs)  # auto: no miou, so loc_map
    assert "(loc_map) (%)" in board.caption
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "VOC 2012", "MS COCO"]
    assert list(frame["Method"]) == ["WILDCAT", "mynet"]  # known methods first, unknown names as-is
    assert cell(board, "WILDCAT", "MS COCO") == "41.0" and cell(board, "mynet", "MS COCO") == "-"
    with pytest.raises(ConfigError, match="metrics: cls_map, loc_map"):
        build_leaderboard(runs, metric="miou")


def test_by_metrics_and_split_columns():
    runs = three_seeds() + [rec(seed=0, split="test", metrics={"loc_map": 0.7})]
    board = build_leaderboard(runs, by="metrics")
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "Dataset", "loc_map", "cls_map"]
    assert list(frame["Dataset"]) == ["VOC 2012 (test)", "VOC 2012 (val)"]
    assert list(frame["loc_map"]) == ["70.0", "63.0 \u00b1 3.6 (3)"]
    assert list(frame["cls_map"]) == ["-", "90.0 \u00b1 0.0 (3)"]
    by_ds = build_leaderboard(runs, metric="loc_map")
    assert by_ds.columns == ["VOC 2012 (test)", "VOC 2012 (val)"]
    only_val = build_leaderboard(runs, metric="cls_map,loc_map", by="metrics", split="val")
    assert only_val.columns == ["cls_map", "loc_map"] and only_val.heads == ["Method"]  # in the order asked


def test_by_metrics_with_named_datasets_shows_their_references_and_says_so():
    runs = [rec(method="mask_rcnn", dataset="shapes", metrics={"coco_ap_segm": 0.319, "coco_ap50_segm": 0.568})]
    board = build_leaderboard(runs, by="metrics", metric="coco_ap_segm,coco_ap50_segm", published=True,
                              dataset="shapes,coco")
    assert board.columns == ["coco_ap_segm", "coco_ap50_segm"]
    assert cell(board, "Mask R-CNN R101-FPN (paper)", "coco_ap50_segm") == "58.0"
    assert cell(board, "Mask R-CNN", "coco_ap_segm") == "31.9"
    assert board.caption.startswith("Metrics on MS COCO, Shapes") or board.caption.startswith("Metrics on Shapes, MS COCO")


# -- renderings ------------------------------------------------------------------------------------------
@pytest.fixture
def runs_dir(tmp_path):
    store = RunStore(tmp_path / "runs")
    for r in three_seeds() + [rec(dataset="coco", metrics={"loc_map": 0.41}),
                              rec(seed=5, status="failed", metrics={"loc_map": 0.99})]:
        store.write(r)
    return store.root


def test_markdown_output(runs_dir):
    text = leaderboard(runs_dir, metric="loc_map")
    assert text.startswith("Table: Pointing localization mAP (loc_map) (%)")
    lines = [line for line in text.splitlines() if line.startswith("|")]
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["Method", "VOC 2012", "MS COCO"]
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["WILDCAT", "63.0 \u00b1 3.6 (3)", "41.0"]
    assert "99.0" not in text


def test_csv_output_parses_back_to_the_numbers(runs_dir):
    frame = pd.read_csv(io.StringIO(leaderboard(runs_dir, metric="loc_map", fmt="csv")))
    assert list(frame.columns) == ["Method", "VOC 2012", "VOC 2012 std", "VOC 2012 n", "MS COCO", "MS COCO std",
                                   "MS COCO n"]
    row = frame.iloc[0]
    assert row["Method"] == "WILDCAT"
    assert row["VOC 2012"] == pytest.approx(63.0)
    assert row["VOC 2012 std"] == pytest.approx(100 * statistics.stdev(SEED_VALUES), abs=1e-5)
    assert row["VOC 2012 n"] == 3
    assert row["MS COCO"] == pytest.approx(41.0) and row["MS COCO n"] == 1 and pd.isna(row["MS COCO std"])


def test_latex_output_uses_booktabs_and_escapes(runs_dir):
    text = leaderboard(runs_dir, metric="loc_map", fmt="latex")
    for token in (r"\toprule", r"\midrule", r"\bottomrule", r"(loc\_map) (\%)",
                  r"WILDCAT & 63.0 $\pm$ 3.6 (3) & 41.0 \\", r"Method & VOC 2012 & MS COCO \\"):
        assert token in text
    assert "loc_map" not in text.replace(r"loc\_map", "")


def test_write_leaderboard_refuses_to_overwrite(runs_dir, tmp_path):
    out = tmp_path / "out" / "board.csv"
    assert write_leaderboard(runs_dir, out, metric="loc_map") == out
    assert out.read_text().startswith("Method,VOC 2012,")  # format from the suffix
    out.write_text("mine")
    with pytest.raises(LeaderboardError, match="already exists; use --force"):
        write_leaderboard(runs_dir, out, metric="loc_map")
    assert out.read_text() == "mine"
    write_leaderboard(runs_dir, out, metric="loc_map", overwrite=True, fmt="md")
    assert out.read_text().startswith("Table:")
    with pytest.raises(ConfigError, match="formats"):
        leaderboard(runs_dir, fmt="html")


# -- published references ------------------------------------------------------------------------------
def test_published_rows_present_and_marked(runs_dir):
    board = build_leaderboard(RunStore(runs_dir).iter_records(), metric="loc_map", published=True)
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "VOC 2012", "MS COCO", "Source"]
    assert cell(board, "WSLocalization (paper)", "VOC 2012") == "79.7"  # verified: no mark
    assert cell(board, "Deep MIL (paper)", "VOC 2012") == "74.5\u2020"  # to verify: marked
    assert cell(board, "Deep MIL (paper)", "MS COCO") == "41.2\u2020"
    assert "WILDCAT (paper)" not in set(frame["Method"])  # no value yet: left out
    labels = list(frame["Method"])
    assert labels.index("WILDCAT") == labels.index("SPN (paper)") - 1  # method order: WILDCAT then SPN
    assert any("not yet verified" in note for note in board.footnotes)
    csv = pd.read_csv(io.StringIO(board.to_csv()))
    wsloc = csv[csv["Method"] == "WSLocalization (paper)"].iloc[0]
    assert wsloc["VOC 2012"] == pytest.approx(79.7) and bool(wsloc["VOC 2012 verified"]) is True
    deepmil = csv[csv["Method"] == "Deep MIL (paper)"].iloc[0]
    assert bool(deepmil["MS COCO verified"]) is False and pd.isna(deepmil["MS COCO n"])
    assert "cls_map" not in board.to_markdown()  # only the chosen metric's references
    md = leaderboard(runs_dir, metric="loc_map", published=True)
    assert "| Deep MIL (paper)" in md and "\u2020 not yet verified" in md


def test_named_datasets_keep_their_published_columns_beside_runs_elsewhere():
    runs = [rec(dataset="shapes", seed=s, metrics={"loc_map": v}) for s, v in enumerate(SEED_VALUES)]
    board = build_leaderboard(runs, metric="loc_map", published=True, dataset="shapes,voc2012,coco")
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "Shapes", "VOC 2012", "MS COCO", "Source"]
    assert cell(board, "WILDCAT", "Shapes") == "63.0 ± 3.6 (3)"
    assert cell(board, "WILDCAT", "VOC 2012") == "-"
    assert cell(board, "WSLocalization (paper)", "MS COCO") == "49.2"
    unnamed = build_leaderboard(runs, metric="loc_map", published=True).display_frame()
    assert list(unnamed.columns) == ["Method", "Shapes", "Source"]  # references only for the runs' datasets


def test_published_only_table_and_split_labels():
    board = build_leaderboard([], metric="miou", published=True, dataset="voc2012")
    labels = list(board.display_frame()["Method"])
    assert "FCN-8s PAMI 2016 (paper, test)" in labels and "FCN-8s PAMI 2016 (paper, seg11valid)" in labels
    assert cell(board, "DeepLab v1 LargeFOV (paper)", "VOC 2012") == "62.25"  # the paper's precision
    assert cell(board, "EDeconvNet + CRF (paper)", "VOC 2012") == "72.5"


def test_shipped_published_csv_is_valid_and_matches_the_design_notes():
    frame = load_published()
    assert not frame.duplicated(["method", "display_name", "dataset", "split", "metric"]).any()
    verified = {(r.method, r.dataset, r.metric, r.value) for r in frame.itertuples() if r.verified}
    assert ("wsloc", "voc2012", "loc_map", 79.7) in verified and ("wsloc", "coco", "loc_map", 49.2) in verified
    assert ("deeplab_v3plus", "voc2012", "miou", 89.0) in verified
    assert ("mask_rcnn", "coco", "coco_ap_segm", 35.7) in verified
    for unverified in [("deepmil", "voc2012", "loc_map", 74.5), ("pronet", "coco", "loc_map", 46.4),
                       ("spn", "voc2012", "loc_map", 82.9), ("wildcat", "voc2007", "cls_map", 95.0),
                       ("deconvnet", "voc2012", "miou", 69.6), ("emadapt", "voc2012", "miou", 39.6)]:
        assert unverified not in verified
        assert unverified[:3] in {(r.method, r.dataset, r.metric) for r in frame.itertuples()}
    assert ("mask_rcnn", "coco", "coco_ap50_segm", 58.0) in verified and ("mask_rcnn", "coco", "coco_ap75_segm", 37.8) in verified
    assert set(frame["metric"]) <= {"loc_map", "cls_map", "miou", "coco_ap_segm", "coco_ap50_segm", "coco_ap75_segm",
                                    "coco_ap_bbox", "accuracy"}


@pytest.mark.parametrize(
    "line, expected",
    [
        ("deepmil,Deep MIL,voc2012,,loc_map,high,src,false,", "row 3: value 'high' is not a number"),
        ("deepmil,Deep MIL,voc2012,,loc_map,120,src,false,", "row 3: value 120 must be a percentage"),
        ("deepmil,Deep MIL,voc2012,,loc_map,70,src,yes,", "row 3: verified must be true or false"),
        ("deepmil,Deep MIL,voc2012,,loc_map,,src,true,", "row 3: a verified row needs a value"),
        ("Deep MIL,Deep MIL,voc2012,,loc_map,70,src,false,", "row 3: method 'Deep MIL'"),
        ("deepmil,Deep MIL,voc2012,,loc_map,74.5,src,false,", "row 3: duplicates row 2"),
    ],
)
def test_published_loader_errors_name_file_and_row(tmp_path, line, expected):
    path = tmp_path / "published.csv"
    header = "method,display_name,dataset,split,metric,value,source,verified,note"
    path.write_text(f"{header}\ndeepmil,Deep MIL,voc2012,,loc_map,74.5,src,false,\n{line}\n")
    with pytest.raises(PublishedError) as info:
        read_published(path)
    assert str(info.value).startswith(f"{path}, row") and expected in str(info.value)
    path.write_text("method,value\n")
    with pytest.raises(PublishedError, match="missing column"):
        read_published(path)


def test_a_paper_recipes_deviations_are_numbered_footnotes_under_its_row():
    shared = "backbone ResNet-101 where the paper used VGG16"
    weldon = [dataclasses.replace(r, extra={"deviations": [shared, "500 steps, not 20 epochs"]})
              for r in three_seeds(method="weldon", recipe="paper")]
    cam = [dataclasses.replace(rec(method="cam", recipe="paper", metrics={"loc_map": 0.4}),
                               extra={"deviations": [shared]})]
    plain = [rec(method="wildcat", recipe="bench", metrics={"loc_map": 0.3})]
    board = build_leaderboard(weldon + cam + plain, metric="loc_map")
    labels = list(board.display_frame()["Method"])
    assert sorted(labels) == ["CAM [1]", "WELDON [1,2]", "WILDCAT"]
    assert board.footnotes[-2:] == [f"[1] deviation from the paper: {shared}",
                                    "[2] deviation from the paper: 500 steps, not 20 epochs"]
    assert "[2] deviation from the paper: 500 steps" in board.render("md")
    assert "WILDCAT [" not in board.render("md")


def test_the_output_format_follows_the_suffix_and_an_unknown_suffix_is_refused(tmp_path):
    from segbench.results.leaderboard import format_for, write_leaderboard

    assert [format_for(n) for n in ("t.md", "t.CSV", "t.tex", "t.latex")] == ["md", "csv", "latex", "latex"]
    with pytest.raises(ConfigError, match=r"t.xlsx: cannot tell the table format from the suffix '.xlsx'"):
        format_for("t.xlsx")
    store = RunStore(tmp_path / "runs")
    store.write(rec())
    with pytest.raises(ConfigError, match="--format"):
        write_leaderboard(tmp_path / "runs", tmp_path / "t.xlsx")
    assert not (tmp_path / "t.xlsx").exists()
    out = write_leaderboard(tmp_path / "runs", tmp_path / "t.xlsx", fmt="csv")  # --format says it outright
    assert out.read_text().startswith("Method")
    assert write_leaderboard(tmp_path / "runs", tmp_path / "t.csv").read_text().count(",") >= 1
