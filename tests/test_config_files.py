"""Config files: ``segbench config RUN_ID`` -> ``segbench run --config`` gives the same run, ``--from RUN_ID``,
``base:`` inheritance and the precedence base < file < ``--set`` / options, and the example files.

The bad files (YAML that does not parse, a base cycle, a missing base, unknown keys, wrong values, an unknown
``--from`` run) are in ``tests/test_bad_input.py``'s corpus.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from segbench.testing.cli import run_cli as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "configs"
TINY = ["--set", "steps=2", "--set", "image_size=32", "--set", "num_train=8", "--set", "num_val=4",
        "--set", "batch_size=2", "-q"]


def run(capsys, runs: Path, *args: str) -> tuple[dict, str]:
    """``segbench run ARGS``, which must succeed: (its record, its stdout)."""
    code, out, err = cli(capsys, "run", *args, "--runs-dir", str(runs))
    assert code == 0, err
    return json.loads(Path(out.strip().splitlines()[-1].split("record: ", 1)[1]).read_text()), out


def test_config_then_run_config_is_the_same_run_and_from_reruns_it(capsys, tmp_path):
    runs = tmp_path / "runs"
    first, _ = run(capsys, runs, "--method", "weldon", *TINY, "--set", "kmax=2", "--seed", "3")
    code, text, err = cli(capsys, "config", first["run_id"], "--runs-dir", str(runs))
    assert code == 0, err
    assert f"config_id {first['config_id']}" in text.splitlines()[0]
    (tmp_path / "f.yaml").write_text(text)
    again, out = run(capsys, runs, "--config", str(tmp_path / "f.yaml"))
    assert again["run_id"] == first["run_id"] and again["config_id"] == first["config_id"]
    assert "identical run already finished" in out and len(list(runs.glob("*.json"))) == 1
    again, out = run(capsys, runs, "--from", first["run_id"][:8])
    assert again["run_id"] == first["run_id"] and "identical run already finished" in out
    changed, out = run(capsys, runs, "--from", first["run_id"], "--set", "steps=3")
    assert "identical" not in out and changed["config_id"] != first["config_id"]
    assert changed["config"]["train"]["steps"] == 3 and changed["seed"] == 3
    assert changed["config"]["model"]["kmax"] == 2.0 and changed["config"]["data"] == first["config"]["data"]
    assert {**changed["config"]["train"], "steps": 2} == first["config"]["train"]


def test_an_older_record_gets_the_neutral_value_of_fields_it_predates():
    """A record written before ``ema`` / ``accumulate`` (and WELDON's ``halve``) existed gives a file that
    trains as it did, so the same config_id; renamed options (WSLoc's ``steps``) come back under the new name."""
    from segbench.configfile import record_settings
    from segbench.engine.config import LATE_TRAIN_FIELDS, resolve_config
    from segbench.plugins import get_registry

    registry = get_registry()
    config = resolve_config(registry.method("wsloc"), registry.dataset("shapes"), {}, "quick").to_dict()
    for name in LATE_TRAIN_FIELDS:
        del config["train"][name]
    config["model"]["steps"] = config["model"].pop("beam_steps")
    settings = record_settings({"config": config, "seed": 0, "split": "val", "dataset_identity": {}})
    assert {k: settings["train"][k] for k in LATE_TRAIN_FIELDS} == LATE_TRAIN_FIELDS
    assert "steps" not in settings["model"] and settings["model"]["beam_steps"] == config["model"]["steps"]


def test_base_then_file_then_set_and_options(capsys, tmp_path):
    (tmp_path / "base.yaml").write_text(
        "method: weldon\nseed: 5\ntrain: {steps: 2, batch_size: 2, lr: 0.05, weight_decay: 0.001}\n"
        "data: {image_size: 32, num_train: 8, num_val: 4}\nmodel: {kmax: 4, alpha: 0.5}\n")
    (tmp_path / "more.yaml").write_text("train: {weight_decay: 0.002}\ndata: {num_val: 6}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "run.yaml").write_text(  # bases relative to the file; the later base wins
        "base: [../base.yaml, ../more.yaml]\ntrain: {lr: '${model.alpha}'}\nmodel: {kmax: 2}\n"
        "metrics: [cls_map, loc_map]\n")
    record, _ = run(capsys, tmp_path / "runs", "--config", str(tmp_path / "sub" / "run.yaml"),
                    "--set", "kmax=3", "--seed", "1", "-q")
    train, model = record["config"]["train"], record["config"]["model"]
    assert (train["steps"], train["lr"], train["weight_decay"]) == (2, 0.5, 0.002)  # base, file, later base
    assert (model["kmax"], model["alpha"]) == (3.0, 0.5)  # --set over the file over the base
    assert record["seed"] == 1 and record["config"]["data"]["num_val"] == 6  # --seed over the base's
    assert sorted(record["config"]["metrics"]) == ["cls_map", "loc_map"]  # as --metrics cls_map,loc_map
    assert set(record["metrics"]) == {"cls_map", "cls_map@prior", "loc_map", "loc_map@centre"}


def test_metrics_on_the_command_line_replace_the_files_and_drop_their_options():
    from segbench.configfile import RunSettings, combine

    settings = RunSettings(options={"method": "weldon", "seed": 2}, metrics=["loc_map"], postprocess=["cam_mask"],
                           overrides={"metrics.loc_map.tolerance": 3, "train.steps": 4},
                           sources={"method": "f.yaml", "metrics.loc_map": "f.yaml", "train.steps": "f.yaml"})
    line = {"method": None, "dataset": "shapes", "recipe": None, "seed": 0, "split": None, "root": None,
            "metrics": ["cls_map"], "postprocess": ["densecrf"]}
    args, overrides, sources = combine(settings, line, {"metrics", "postprocess"}, {"steps": 9})
    assert args["method"] == "weldon" and args["seed"] == 2 and args["metrics"] == ["cls_map"]
    assert args["postprocess"] == ["cam_mask", "densecrf"]  # the command line's after the file's
    assert overrides == {"train.steps": 4, "steps": 9} and list(overrides)[-1] == "steps"  # --set applies last
    assert sources["train.steps"] == "f.yaml"


@pytest.mark.parametrize("name", ["weldon-shapes.yaml", "weldon-shapes-small.yaml"])
def test_the_example_files_load_and_resolve(capsys, tmp_path, name):
    from segbench.configfile import read_run_settings

    settings = read_run_settings(str(EXAMPLES / name), None, None)
    assert settings.options == {"method": "weldon", "dataset": "shapes", "recipe": "quick", "seed": 0}
    small = name == "weldon-shapes-small.yaml"
    assert settings.overrides["train.steps"] == (2 if small else 300)
    assert settings.overrides["model.kmax"] == 3 and settings.metrics == (["cls_map", "loc_map"] if small else None)
    code, out, err = cli(capsys, "run", "--config", str(EXAMPLES / name), "--dry-run", "--runs-dir",
                         str(tmp_path / "runs"))
    assert code == 0, err
    assert f"steps          {2 if small else 300} " in out and not (tmp_path / "runs").exists()


def test_yaml_spellings_become_the_same_overrides(tmp_path):
    """A bare ``off`` (YAML 1.1 false) is amp's 'off'; names as a list, a comma string or a mapping."""
    from segbench.configfile import read_run_settings

    path = tmp_path / "run.yaml"
    path.write_text("method: cam\ntrain: {amp: off}\nmetrics: miou, cls_map\n"
                    "postprocess: {cam_mask: {bg_threshold: 0.3}, densecrf: null}\n")
    settings = read_run_settings(str(path), None, None)
    assert settings.overrides == {"train.amp": "off", "postprocess.cam_mask.bg_threshold": 0.3}
    assert settings.metrics == ["miou", "cls_map"] and settings.postprocess == ["cam_mask", "densecrf"]
    assert settings.sources["train.amp"] == str(path) and settings.sources["postprocess.densecrf"] == str(path)


def test_help_and_list_do_not_import_omegaconf():
    """The YAML reader loads only for --config / --from / segbench config."""
    import subprocess
    import sys

    code = ("import sys\nfrom segbench.cli import main\n"
            "for argv in (['list'], ['--help'], ['run', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "print('LOADED', sorted(m for m in ('omegaconf', 'yaml', 'torch') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert "LOADED []" in out, out[-500:]
