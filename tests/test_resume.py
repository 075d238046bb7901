"""Resume: kill -9 or SIGTERM a run, run the same command again, get the numbers of an uninterrupted run."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from segbench.engine.checkpoint import (CheckpointError, RunLock, latest_checkpoint, list_checkpoints,
                                        load_checkpoint, save_checkpoint, state_dir)
from segbench.engine.run import run_experiment
from segbench.errors import ConfigError

# 16 training images in batches of 4: epochs of 4 steps; checkpoints every 3 steps and at epoch ends
TINY = {"steps": 30, "image_size": 32, "num_train": 16, "num_val": 7, "batch_size": 4, "threads": 1,
        "checkpoint_every": 3}


def _run(runs: Path, messages: list | None = None):
    echo = messages.append if messages is not None else (lambda message: None)
    return run_experiment("weldon", "shapes", overrides=TINY, runs=runs, progress=False, echo=echo)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run."""
    outcome = _run(tmp_path_factory.mktemp("reference"))
    return outcome.record, _weights(outcome.path.with_suffix(".safetensors"))


def _assert_same_run(outcome, reference) -> None:
    record, weights = reference
    assert outcome.record["status"] == "finished" and outcome.record["run_id"] == record["run_id"]
    assert outcome.record["metrics"] == record["metrics"] and outcome.record["per_class"] == record["per_class"]
    resumed = _weights(outcome.path.with_suffix(".safetensors"))
    assert resumed.keys() == weights.keys() and all(torch.equal(resumed[k], weights[k]) for k in weights)
    assert outcome.record["timings"]["train_steps"] == TINY["steps"]
    assert not state_dir(outcome.path).exists()  # a finished run leaves no checkpoints


def _steps(runs: Path) -> list[int]:
    return [int(p.name[5:]) for p in runs.glob("*.ckpt/step-*") if not p.name.endswith(".corrupt")]


def test_kill_9_at_a_random_step_then_the_same_command_resumes_to_the_same_numbers(reference, tmp_path):
    at = random.Random().randrange(3, 22)  # kill once a checkpoint at or after this step exists
    args = [a for key, value in TINY.items() for a in ("--set", f"{key}={value}")]
    child = subprocess.Popen([sys.executable, "-m", "segbench", "run", "-m", "weldon", *args, "-q",
                              "--runs-dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while child.poll() is None and time.monotonic() < deadline and max(_steps(tmp_path), default=0) < at:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, child.stderr.read().decode()[-2000:]
    child.stderr.close()
    killed = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert killed["status"] == "running" and max(_steps(tmp_path)) >= at
    messages: list[str] = []
    outcome = _run(tmp_path, messages)
    step = outcome.record["resumes"][0]["step"]
    assert step >= at and outcome.record["resumes"][0]["previous_status"] == "running"
    assert any(m.startswith(f"resuming run {killed['run_id']} (running) from step {step}") for m in messages)
    _assert_same_run(outcome, reference)
    assert len(list(tmp_path.glob("*.json"))) == 1  # the same record, not a new one


def test_sigterm_stops_cleanly_and_a_corrupt_checkpoint_falls_back_to_the_previous(reference, tmp_path):
    def send_sigterm_after_the_first_checkpoint():
        deadline = time.monotonic() + 120
        while not _steps(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.002)
        os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a late signal must not end pytest
    try:
        sender = threading.Thread(target=send_sigterm_after_the_first_checkpoint)
        sender.start()
        with pytest.raises(KeyboardInterrupt, match=r"stopped by SIGTERM at step (\d+) after a checkpoint") as info:
            _run(tmp_path)
        sender.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
    stopped = int(str(info.value).split("at step ")[1].split()[0])
    record = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert record["status"] == "interrupted" and f"at step {stopped}" in record["error"]
    directory = state_dir(next(tmp_path.glob("*.json")))
    kept = list_checkpoints(directory)
    assert [p.name for p in kept][0] == f"step-{stopped:08d}" and len(kept) == 2  # the last two

    # while another process holds the run, it is not resumed a second time
    lock = RunLock.acquire(directory)
    try:
        with pytest.raises(ConfigError, match=f"run {record['run_id']} is in progress in another process"):
            _run(tmp_path)
    finally:
        lock.release()

    newest = kept[0] / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    messages: list[str] = []
    outcome = _run(tmp_path, messages)
    assert any(f"checkpoint {kept[0]}" in m and "falling back to the previous checkpoint" in m for m in messages)
    assert outcome.record["resumes"][0] == {**outcome.record["resumes"][0], "step": int(kept[1].name[5:]),
                                            "previous_status": "interrupted"}
    _assert_same_run(outcome, reference)


def test_checkpoints_round_trip_keep_the_last_two_and_name_a_bad_one(tmp_path):
    model = torch.nn.Linear(3, 2)
    state = {"step": 0, "rng": [torch.get_rng_state()], "optimizer": {"lr": 0.1}, "loss": float("nan")}
    (tmp_path / ".step-00000001.abc.tmp").mkdir()  # left by a write that was killed
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, state)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000003", "step-00000002"]
    assert not list(tmp_path.glob(".*.tmp"))
    weights, loaded = load_checkpoint(tmp_path / "step-00000003")
    assert torch.equal(weights["weight"], model.weight) and loaded["step"] == 3
    assert torch.equal(loaded["rng"][0], state["rng"][0]) and loaded["optimizer"] == {"lr": 0.1}
    (tmp_path / "step-00000003" / "state.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"checkpoint .*step-00000003: state.pt is truncated or altered"):
        load_checkpoint(tmp_path / "step-00000003")
    warnings: list[str] = []
    path, _, loaded = latest_checkpoint(tmp_path, warn=warnings.append)
    assert path.name == "step-00000002" and loaded["step"] == 2 and len(warnings) == 1
    assert (tmp_path / "step-00000003.corrupt").is_dir()  # kept for inspection, never loaded again
    (tmp_path / "step-00000002" / "meta.json").unlink()
    assert latest_checkpoint(tmp_path, warn=warnings.append) is None
    assert warnings[-1] == f"warning: no usable checkpoint in {tmp_path}; starting from step 0"
