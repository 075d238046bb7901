"""Validation during training (eval_every, val_split, select): curves in the record, the best checkpoint, resume."""

from __future__ import annotations

import csv
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from segbench import hookimpl
from segbench.engine.config import TrainConfig, identity_dict
from segbench.engine.run import run_experiment
from segbench.plugins import get_registry
from segbench.testing.cli import run_cli

TINY = {"steps": 6, "image_size": 32, "num_train": 8, "num_val": 4, "batch_size": 2, "threads": 1}


def _run(runs, **overrides):
    messages: list[str] = []
    outcome = run_experiment("weldon", "shapes", overrides={**TINY, **overrides}, runs=runs, progress=False,
                             echo=messages.append)
    return outcome, messages


def _equal_weights(a, b) -> bool:
    a, b = load_file(str(a)), load_file(str(b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_select_keeps_the_best_checkpoint_and_evaluates_it(tmp_path):
    outcome, messages = _run(tmp_path, eval_every=2, select="miou", log_every=1)
    record = outcome.record
    curve = record["curves"]["val/miou"]
    assert [step for step, _ in curve] == [2, 4, 6]
    assert [step for step, _ in record["curves"]["loss"]] == [1, 2, 3, 4, 5, 6]
    best = max(value for _, value in curve)
    first_best = next(step for step, value in curve if value == best)  # a tie keeps the earlier step
    chosen = record["validation"]
    assert chosen == {**chosen, "every": 2, "split": "val", "select": "miou", "chosen": "best", "step": first_best,
                      "value": best}
    # validated on the reported split: the final evaluation of the best weights gives the best value again
    assert record["metrics"]["miou"] == best
    assert record["metrics"]["cls_map"] == dict(record["curves"]["val/cls_map"])[first_best]
    last = tmp_path / chosen["last_weights"]
    assert last.is_file() and record["weights"] == f"{record['run_id']}.safetensors"
    assert _equal_weights(last, outcome.path.with_suffix(".safetensors")) == (first_best == TINY["steps"])
    assert any(m.startswith("warning: validating on 'val', the split this run reports; select= picks")
               for m in messages)
    assert record["timings"]["val_s"] > 0


def test_validation_without_select_changes_no_number(tmp_path):
    plain, _ = _run(tmp_path / "plain", eval_every=0)
    validated, _ = _run(tmp_path / "validated", eval_every=3)
    assert validated.record["config_id"] != plain.record["config_id"]
    assert validated.record["metrics"] == plain.record["metrics"]  # RNG states and modes restored around it
    assert _equal_weights(plain.path.with_suffix(".safetensors"), validated.path.with_suffix(".safetensors"))
    record = validated.record
    assert record["validation"]["chosen"] == "last" and record["validation"]["step"] == 6
    assert record["validation"]["value"] is None and record["validation"]["last_weights"] is None
    assert [s for s, _ in record["curves"]["val/miou"]] == [3, 6]
    assert record["metrics"]["miou"] == record["curves"]["val/miou"][-1][1]
    assert "validation" not in plain.record and set(plain.record["curves"]) == {"loss"}


def test_config_ids_do_not_change_at_eval_every_0(tmp_path):
    identity = identity_dict({"train": dataclasses.asdict(TrainConfig())})["train"]
    assert not {"eval_every", "val_split", "select"} & set(identity)
    default, _ = _run(tmp_path / "a")
    explicit, _ = _run(tmp_path / "b", eval_every=0, val_split="", select="")
    assert default.record["run_id"] == explicit.record["run_id"]


def test_another_val_split_is_validated_without_a_warning(tmp_path):
    outcome, messages = _run(tmp_path, eval_every=3, val_split="test", select="cls_map", num_test=4)
    assert outcome.record["validation"]["split"] == "test"
    assert not any("validating on" in m for m in messages)
    # validated on another split: the reported value is the evaluation split's, not the validation's
    assert outcome.record["validation"]["value"] == max(v for _, v in outcome.record["curves"]["val/cls_map"])


@pytest.mark.parametrize("sets, message", [
    (["select=coco_ap", "eval_every=2"],
     "Error: select=coco_ap is not a metric of weldon on shapes; it has {metrics} (all higher-is-better)"),
    (["select=miou"], "Error: val_split and select choose what validation does: set eval_every=N (steps) too"),
    (["val_split=nope", "eval_every=2"], "Error: dataset 'shapes' has no split 'nope' to validate on; "
                                          "splits: train, val, test"),
    (["eval_every=-1"], "Error: eval_every must be 0 (off) or a number of steps, got -1"),
])
def test_bad_validation_settings_are_one_line_errors(capsys, tmp_path, sets, message):
    args = [a for s in sets for a in ("--set", s)]
    code, _, err = run_cli(capsys, "run", "-m", "weldon", "--set", "steps=2", *args, "--runs-dir", str(tmp_path))
    from segbench.engine.run import applicable_metrics, postprocess_chain

    registry = get_registry()
    method, shapes = registry.method("weldon"), registry.dataset("shapes")
    metrics = applicable_metrics(method, shapes, registry, None, postprocess_chain(method, shapes, registry)[1])
    assert code != 0 and err.strip() == message.format(metrics=", ".join(sorted(metrics)))
    assert not list(tmp_path.glob("*.json"))


class _Stop(KeyboardInterrupt):
    pass


def test_a_resumed_run_gives_the_record_of_an_uninterrupted_one(tmp_path):
    settings = {"steps": 8, "eval_every": 2, "select": "miou", "log_every": 1, "checkpoint_every": 3}
    reference, _ = _run(tmp_path / "reference", **settings)

    @hookimpl
    def run_step(run, step, scalars):
        if step == 7:
            raise _Stop("stopped at step 7")  # not an Exception: the logger guard lets it through, as Ctrl-C

    registry = get_registry()
    registry.register_plugin(SimpleNamespace(run_step=run_step), "stopper")
    try:
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "resumed", **settings)
    finally:
        registry.pm.unregister(name="stopper")
        registry.plugins.pop("stopper")
    runs = tmp_path / "resumed"
    resumed, messages = _run(runs, **settings)
    record = resumed.record
    assert record["resumes"][0]["step"] == 6 and any("from step 6" in m for m in messages)
    assert record["curves"] == reference.record["curves"]
    assert record["metrics"] == reference.record["metrics"]
    same = ("every", "split", "select", "chosen", "step", "value")
    assert {k: record["validation"][k] for k in same} == {k: reference.record["validation"][k] for k in same}
    assert _equal_weights(resumed.path.with_suffix(".safetensors"), reference.path.with_suffix(".safetensors"))
    with open(runs / f"{record['run_id']}.log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # each step once, the interrupted 7 dropped
    assert [float(r["val/miou"]) for r in rows if r["val/miou"]] == pytest.approx(
        [v for _, v in reference.record["curves"]["val/miou"]])


def test_show_curves_draws_a_record_and_refuses_one_without_curves(capsys, tmp_path):
    with_curves, _ = _run(tmp_path, eval_every=3, select="miou", steps=3)
    without, _ = _run(tmp_path, log_every=0, steps=3)
    out = tmp_path / "curves.png"
    code, stdout, _ = run_cli(capsys, "show", with_curves.record["run_id"], "--curves", "-o", str(out),
                              "--runs-dir", str(tmp_path))
    assert code == 0 and stdout.strip() == f"wrote {out}" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, _, err = run_cli(capsys, "show", without.record["run_id"], "--curves", "-o", str(tmp_path / "x.png"),
                           "--runs-dir", str(tmp_path))
    assert code != 0 and err.strip() == (f"Error: run '{without.record['run_id']}' has no curves (written with "
                                         "log_every=0, before segbench kept them, or it did not train)")
    code, _, err = run_cli(capsys, "show", without.record["run_id"], "--curves", "--confusion", "-o", "y.png",
                           "--runs-dir", str(tmp_path))
    assert code == 2 and "choose one" in err


@pytest.mark.parametrize("curves, problem", [
    ({"loss": [[1, 0.5], [1, 0.4]]}, "curve 'loss' must have increasing positive integer steps"),
    ({"val/miou": [[2, "high"]]}, "curve 'val/miou' must have numbers (or null) as values"),
    ({"loss": [1, 2]}, "curve 'loss' must be a list of [step, value] pairs"),
])
def test_records_with_bad_curves_do_not_load(tmp_path, curves, problem):
    from segbench.results.record import RecordError, RunRecord

    record = RunRecord(run_id="0" * 16, config_id="1" * 16, status="finished", method="m", dataset="d", split="val",
                       recipe="quick", seed=0, dataset_identity={"fingerprint": "f"}, curves=curves)
    with pytest.raises(RecordError, match=r"^r: " + problem.replace("[", r"\[").replace("]", r"\]")
                       .replace("(", r"\(").replace(")", r"\)") + "$"):
        RunRecord.from_dict(record.to_dict(), "r")
    old = {k: v for k, v in record.to_dict().items() if k != "curves"}
    assert RunRecord.from_dict(old).curves == {}  # older records have none


def test_with_ema_the_moving_average_is_validated_selected_and_saved(tmp_path):
    outcome, _ = _run(tmp_path, eval_every=2, select="miou", ema=0.5)
    record = outcome.record
    best = max(v for _, v in record["curves"]["val/miou"])
    assert record["validation"]["value"] == best == record["metrics"]["miou"]  # the saved best is what is scored
    plain, _ = _run(tmp_path / "plain", eval_every=2, select="miou")
    assert record["curves"]["val/miou"] != plain.record["curves"]["val/miou"]  # the average, not the weights
