"""Determinism, shown: the same command twice gives bit-identical numbers on the CPU, whatever the loader workers."""

from __future__ import annotations

import json
import os

import pytest
import torch

from segbench.cli import main
from segbench.engine.seeding import mix, set_deterministic

# augmentations (flip, scale jitter, crop) and dropout: every source of randomness in play
TINY = ["--set", "steps=8", "--set", "image_size=32", "--set", "num_train=12", "--set", "num_val=5",
        "--set", "batch_size=4", "--set", "threads=1", "--set", "crop_size=28", "--set", "scale_min=0.8",
        "--set", "scale_max=1.25", "--set", "dropout=0.3", "-q"]


def _run(capsys, runs, *extra) -> dict:
    try:
        main(["run", "-m", "weldon", *TINY, "--runs-dir", str(runs), *extra])
    except SystemExit as exc:
        pytest.fail(f"exit {exc.code}: {capsys.readouterr().err}")
    out = capsys.readouterr().out
    path = out.strip().splitlines()[-1].removeprefix("record: ")
    return json.loads(open(path).read())


def _weights(runs, record) -> dict:
    from safetensors.torch import load_file

    return load_file(str(runs / record["weights"]))


def test_same_command_twice_is_bit_identical_and_workers_do_not_matter(capsys, tmp_path):
    first = _run(capsys, tmp_path)
    again = _run(capsys, tmp_path, "--force")  # trains again into a new record
    assert again["run_id"] != first["run_id"] and again["config_id"] == first["config_id"]
    assert again["metrics"] == first["metrics"] and again["per_class"] == first["per_class"]
    a, b = _weights(tmp_path, first), _weights(tmp_path, again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first["deterministic"] is True and first["nondeterministic_ops"] == []
    # each sample is augmented under its own seed: two loader worker processes give the same numbers
    workers = _run(capsys, tmp_path, "--set", "workers=2")
    assert workers["config"]["train"]["workers"] == 2 and workers["metrics"] == first["metrics"]
    c = _weights(tmp_path, workers)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_nondeterministic_flag_is_recorded(capsys, tmp_path):
    record = _run(capsys, tmp_path, "--nondeterministic", "--set", "steps=1")
    assert record["deterministic"] is False and record["config"]["train"]["deterministic"] is False
    assert "nondeterministic_ops" not in record
    set_deterministic(True)  # back to the default for the tests that follow


def test_deterministic_settings_cover_cudnn_and_cublas(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    try:
        set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    finally:
        set_deterministic(True)


def test_seed_mixing_is_stable_and_separates_seeds_from_epochs():
    assert mix(0, 1) == mix(0, 1) and mix(0, 1) != mix(1, 0) and mix(0, 1) != mix(1, 1)
    assert 0 <= mix(2**40, 7) < 2**62
    assert mix(0, 1) == 503885729082830432  # a change here changes every run's data order: bump the version


def test_an_op_without_a_deterministic_implementation_is_named_once_and_recorded(capsys):
    import warnings

    from segbench.engine.run import _nondeterministic_ops

    torch_text = ("max_unpooling2d_forward_out does not have a deterministic implementation, but you set "
                  "'torch.use_deterministic_algorithms(True, warn_only=True)'. You can file an issue at ...")
    with warnings.catch_warnings(record=True) as passed_on:
        warnings.simplefilter("always")
        with _nondeterministic_ops() as found:
            for _ in range(3):
                warnings.warn(torch_text, UserWarning)
            warnings.warn("something else", UserWarning)
    assert found == {"max_unpooling2d_forward_out"}
    assert [str(w.message) for w in passed_on] == ["something else"]
    err = capsys.readouterr().err
    assert err.count("note: torch has no deterministic implementation of max_unpooling2d_forward_out (recorded in "
                     "the run's nondeterministic_ops)") == 1
    assert "You can file an issue" not in err
