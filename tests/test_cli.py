"""The command line end to end: run, records, re-run, eval, leaderboard, and every bad-input path."""

import json

import pytest

from segbench.testing.cli import run_cli as segbench
from segbench.plugins import get_registry

TINY = ["--set", "steps=3", "--set", "image_size=32", "--set", "num_train=8", "--set", "num_val=6",
        "--set", "batch_size=4", "-q"]




@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One tiny WELDON run shared by the tests that only read its record."""
    runs = tmp_path_factory.mktemp("runs")
    from segbench.engine.config import parse_overrides
    from segbench.engine.run import run_experiment

    overrides = parse_overrides([TINY[i + 1] for i in range(0, len(TINY) - 1, 2)])
    outcome = run_experiment("weldon", "shapes", overrides=overrides, runs=runs, progress=False)
    return runs, outcome


def test_run_writes_a_complete_record(finished_run):
    runs, outcome = finished_run
    record = json.loads(outcome.path.read_text())
    assert record["status"] == "finished" and record["method"] == "weldon" and record["dataset"] == "shapes"
    assert {"cls_map", "loc_map", "loc_map@centre", "cls_map@prior"} <= set(record["metrics"])
    assert all(0.0 <= v <= 1.0 for v in record["metrics"].values())
    assert record["config"]["train"]["steps"] == 3 and record["config"]["data"]["image_size"] == 32
    assert record["config"]["metrics"]["loc_map"]["tolerance"] >= 1
    assert record["effective_batch_size"] == 4 and record["seed"] == 0
    import timm

    assert record["environment"]["libraries"]["timm"] == timm.__version__  # versions that can change numbers
    assert record["dataset_identity"]["num_images"] == 6
    assert set(record["per_class"]["cls_map"]) == set(record["class_names"])
    assert (runs / record["weights"]).is_file()
    assert not list(runs.glob("*.tmp")) and not list(runs.glob(".*"))


def test_identical_run_is_reused_and_force_adds_a_record(finished_run, capsys):
    runs, outcome = finished_run
    before = outcome.path.read_text()
    code, out, _ = segbench(capsys, "run", "--method", "weldon", *TINY, "--runs-dir", str(runs))
    assert code == 0 and "identical run already finished" in out and str(outcome.path) in out
    assert outcome.path.read_text() == before
    code, out, _ = segbench(capsys, "run", "--method", "weldon", *TINY, "--runs-dir", str(runs), "--force")
    assert code == 0
    records = sorted(runs.glob("*.json"))
    assert len(records) == 2 and outcome.path.read_text() == before
    new = json.loads([p for p in records if p != outcome.path][0].read_text())
    assert new["metrics"] == json.loads(before)["metrics"]  # same config and seed, same numbers


def test_eval_reproduces_the_run_metrics(finished_run, capsys):
    runs, outcome = finished_run
    code, out, err = segbench(capsys, "eval", outcome.record["run_id"], "--runs-dir", str(runs), "-q")
    assert code == 0, err
    cls_map = outcome.record["metrics"]["cls_map"]
    assert f"cls_map" in out and f"{100 * cls_map:6.2f} %" in out


def test_leaderboard_prints_and_writes(finished_run, capsys, tmp_path):
    import pandas as pd

    runs, outcome = finished_run
    code, out, err = segbench(capsys, "leaderboard", "--metric", "cls_map", "--runs-dir", str(runs))
    assert code == 0, err
    assert "WELDON" in out and "Shapes" in out
    target = tmp_path / "table.csv"
    code, out, _ = segbench(capsys, "leaderboard", "--metric", "cls_map", "--format", "csv", "-o", str(target),
                            "--runs-dir", str(runs))
    assert code == 0 and target.is_file()
    table = pd.read_csv(target).set_index("Method")
    assert table.loc["WELDON", "Shapes"] == pytest.approx(100 * outcome.record["metrics"]["cls_map"], abs=1e-4)
    code, _, err = segbench(capsys, "leaderboard", "--format", "csv", "-o", str(target), "--runs-dir", str(runs))
    assert code != 0 and "table.csv" in err  # never silently overwritten


def test_unknown_names_are_one_line_errors_with_exit_2(capsys, tmp_path):
    code, _, err = segbench(capsys, "run", "--method", "weldn", "--runs-dir", str(tmp_path))
    assert code == 2 and err.strip().startswith("Error: unknown method 'weldn'; did you mean 'weldon'")
    assert len(err.strip().splitlines()) == 1
    code, _, err = segbench(capsys, "run", "--method", "weldon", "--dataset", "shapez", "--runs-dir", str(tmp_path))
    assert code == 2 and "unknown dataset 'shapez'; did you mean 'shapes'?" in err
    code, _, err = segbench(capsys, "run", "--method", "weldon", "--set", "kmx=3", "--runs-dir", str(tmp_path))
    assert code == 2 and "unknown --set key 'kmx'" in err and "valid keys:" in err and len(err.splitlines()) == 1
    code, _, err = segbench(capsys, "run", "--method", "weldon", "--recipe", "fast", "--runs-dir", str(tmp_path))
    assert code == 2 and "unknown recipe" in err
    code, _, err = segbench(capsys, "run", "--method", "weldon", "--metrics", "coco_ap", "--runs-dir", str(tmp_path))
    assert code == 2 and "metric 'coco_ap' needs outputs ['instances']" in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_impossible_pairing_fails_before_training(capsys, tmp_path):
    from segbench import hookimpl
    from segbench.specs import DatasetSpec

    class LabelsOnly:
        @hookimpl
        def register_datasets(self, register):
            register(DatasetSpec(name="labels_only", build=lambda root, split: [], classes=("a", "b"),
                                 splits=("train", "val"), annotations={"labels"}, background=None,
                                 needs_root=False))

    registry = get_registry()
    if "labels_only" not in registry.datasets:
        registry.register_plugin(LabelsOnly(), "test-labels-only")
    code, _, err = segbench(capsys, "run", "--method", "fcn8s", "--dataset", "labels_only",
                            "--runs-dir", str(tmp_path))
    assert code == 2
    assert "method 'fcn8s' learns from pixel-level annotations (mask) but dataset 'labels_only' has only labels" in err


def test_non_finite_loss_writes_a_failed_record_and_no_leaderboard_row(capsys, tmp_path):
    code, _, err = segbench(capsys, "run", "--method", "weldon", *TINY, "--set", "lr=1e30", "--set", "steps=6",
                            "--set", "optimizer=sgd", "--runs-dir", str(tmp_path))
    assert code == 1 and "Traceback" not in err
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [
        line for line in err.splitlines() if "non-finite loss at step" in line]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*.json")]
    assert len(records) == 1 and records[0]["status"] == "failed" and "non-finite" in records[0]["error"]
    code, out, _ = segbench(capsys, "leaderboard", "--metric", "cls_map", "--runs-dir", str(tmp_path))
    assert "weldon" not in out


def test_unwritable_runs_dir(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, _, err = segbench(capsys, "run", "--method", "weldon", *TINY, "--runs-dir", str(blocker / "runs"))
    assert code != 0 and str(blocker) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith("Error:")


def test_list_and_help(capsys):
    code, out, _ = segbench(capsys, "list", "methods")
    assert code == 0 and "weldon" in out and "fcn8s" in out
    code, out, _ = segbench(capsys, "list", "plugins")
    assert code == 0 and "segbench.metrics.builtin" in out and "BROKEN" not in out
    code, out, _ = segbench(capsys, "--help")
    assert code == 0 and "leaderboard" in out


def test_listing_does_not_import_torch():
    """``segbench list`` and ``--help`` stay fast because registration imports no torch, timm or pandas."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from segbench.cli import main\n"
        "for argv in (['list'], ['--help']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "heavy = sorted(m for m in ('torch', 'timm', 'pandas', 'torchvision') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "HEAVY []" in out, out[-500:]


def test_data_export_writes_layouts_and_never_overwrites(capsys, tmp_path):
    out = tmp_path / "coco"
    code, stdout, err = segbench(capsys, "data", "export", "shapes", "--format", "coco", "--out", str(out),
                                 "--set", "num_val=3", "--set", "image_size=48")
    assert code == 0, err
    from pycocotools.coco import COCO

    coco = COCO(str(out / "annotations" / "instances_val2017.json"))
    assert len(coco.getImgIds()) == 3 and len(coco.getCatIds()) == 6
    before = (out / "annotations" / "instances_val2017.json").read_bytes()
    code, _, err = segbench(capsys, "data", "export", "shapes", "--format", "coco", "--out", str(out),
                            "--set", "num_val=2")
    assert code == 2 and "--overwrite" in err and str(out) in err
    assert (out / "annotations" / "instances_val2017.json").read_bytes() == before
    code, _, err = segbench(capsys, "data", "export", "shapes", "--format", "voc", "--out", str(tmp_path / "voc"),
                            "--set", "num_val=2", "--set", "image_size=48")
    assert code == 0 and len(list((tmp_path / "voc" / "Annotations").glob("*.xml"))) == 2
