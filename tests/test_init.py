"""``--init RUN_ID|FILE``: FCN-16s staged from a finished FCN-32s run, and every refusal in one line."""

from __future__ import annotations

import json

import pytest
import torch

from segbench.testing.cli import run_cli as segbench
from segbench.plugins import get_registry

TINY = ["--set", "steps=2", "--set", "image_size=32", "--set", "num_train=4", "--set", "num_val=2",
        "--set", "batch_size=2", "--set", "fc_channels=16", "--set", "fc_kernel=1", "-q"]




@pytest.fixture(scope="module")
def fcn32s_run(tmp_path_factory):
    from segbench.engine.config import parse_overrides
    from segbench.engine.run import run_experiment

    runs = tmp_path_factory.mktemp("runs")
    overrides = parse_overrides([TINY[i + 1] for i in range(0, len(TINY) - 1, 2)])
    outcome = run_experiment("fcn32s", "shapes", overrides=overrides, runs=runs, progress=False)
    return runs, outcome.record


def _record_of(out: str) -> dict:
    """The record whose path the run printed last."""
    line = [line for line in out.splitlines() if line.startswith("record: ")][-1]
    return json.loads(open(line.split("record: ", 1)[1]).read())


def _records(runs) -> list[str]:
    return sorted(p.name for p in runs.glob("*.json"))


def test_fcn16s_starts_from_a_finished_fcn32s_run(fcn32s_run, capsys):
    """The staged protocol: every FCN-32s tensor FCN-16s has is copied; its pool4 skip keeps its initialisation."""
    from safetensors.torch import load_file

    from segbench.engine.init import InitSource, apply_init

    runs, source = fcn32s_run
    code, out, err = segbench(capsys, "run", "--method", "fcn16s", "--init", source["run_id"][:8],
                              "--runs-dir", str(runs), *TINY)
    assert code == 0, err
    assert "init: " in err and "score_pool4" in err
    record = _record_of(out)
    assert record["config"]["train"]["init"] == source["run_id"][:8]
    assert record["init"]["identity"] == f"run:{source['run_id']}" and record["init"]["loaded"] > 10
    assert any(k.startswith("score_pool4") for k in record["init"]["kept"])
    weights = load_file(str(runs / source["weights"]))
    spec = get_registry().method("fcn16s")
    options = {**spec.options, **spec.recipes["quick"].model, "fc_channels": 16, "fc_kernel": 1}
    model = spec.build(len(get_registry().dataset("shapes").classes), **options)
    report = apply_init(model, InitSource("x", runs / source["weights"], "run:x"))
    state = model.state_dict()
    assert report.loaded and all(torch.equal(state[k], weights[k]) for k in report.loaded)
    # the same weights given as a file are the same start: the same config_id (the run is reused)
    code, out, err = segbench(capsys, "run", "--method", "fcn16s", "--init", str(runs / source["weights"]),
                              "--runs-dir", str(runs), *TINY)
    assert code == 0 and "identical run already finished" not in out  # a path is hashed by its bytes
    assert _record_of(out)["init"]["identity"].startswith("sha256:")


@pytest.mark.parametrize("init, message", [
    ("0123abcd", "--init 0123abcd: no such weights file, and no run with that id"),
    ("mismatch", "has shape"),
    ("foreign", "none of the"),
])
def test_bad_init_is_one_line_and_leaves_no_record(fcn32s_run, tmp_path, capsys, init, message):
    runs, source = fcn32s_run
    from safetensors.torch import load_file, save_file

    if init == "mismatch":  # the FCN-32s weights with one tensor of another shape
        weights = load_file(str(runs / source["weights"]))
        key = next(k for k in weights if k.endswith("weight") and weights[k].dim() == 4)
        weights[key] = torch.zeros(1, 1, 1, 1)
        init = str(tmp_path / "bad.safetensors")
        save_file(weights, init)
    elif init == "foreign":
        init = str(tmp_path / "other.safetensors")
        save_file({"encoder.conv.weight": torch.zeros(2, 2)}, init)
    before = _records(runs)
    code, out, err = segbench(capsys, "run", "--method", "fcn16s", "--init", init, "--runs-dir", str(runs), *TINY)
    assert code != 0 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert _records(runs) == before


def test_the_staged_fcn_recipes_need_init_and_follow_the_references(capsys, tmp_path):
    """voc-fcn16s / voc-fcn8s: from the coarser net, lr 1e-12 / 1e-14, 100k iterations, no skip scaling."""
    registry = get_registry()
    for name, lr in (("fcn16s", 1e-12), ("fcn8s", 1e-14)):
        staged = registry.method(name).recipes["staged"]
        assert staged.train["lr"] == lr and staged.train["steps"] == 100_000
        assert "pool4_scale" not in staged.model and staged.model["loss_reduction"] == "sum"
    code, out, err = segbench(capsys, "run", "--method", "fcn16s", "--recipe", "staged", "--runs-dir",
                              str(tmp_path), "-q")
    assert code != 0 and "recipe 'fcn16s:staged' starts from a finished fcn32s run" in err and "--init" in err
    assert not list(tmp_path.glob("*.json"))


def test_weights_of_another_architecture_are_one_line_naming_the_first_tensor(tmp_path, capsys):
    """--weights FILE: a resnet18 file for WELDON's test_resnet backbone, and a file that is not weights."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    (tmp_path / "text.pth").write_text("root:x:0:0\n")
    for path, message in ((tmp_path / "r18.safetensors", "tensor 'bn1.weight' is [64] in the file and [32] in the "
                                                          "model (46 other tensors differ in shape)"),
                          (tmp_path / "text.pth", "cannot read weights: not a safetensors or torch.save file")):
        code, out, err = segbench(capsys, "run", "--method", "weldon", "--weights", str(path), "--runs-dir",
                                  str(tmp_path / "runs"), "-q")
        assert code != 0 and message in err, err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").glob("*.json"))
