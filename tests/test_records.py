"""Run records (schema, ids, environment) and the run store (atomic, concurrent, never overwriting)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import platform
import shutil
import subprocess

import pytest

from segbench.errors import SegbenchError
from segbench.results.record import (
    SCHEMA_VERSION, RecordError, RunRecord, canonical_json, collect_environment, git_commit, make_config_id,
    make_run_id, short_hash,
)
from segbench.results.store import RecordWarning, RunStore, StoreError, default_runs_dir

VERSIONS = {"segbench": "0.1.0", "plugins": {"wildcat": "0.1.0"}}


def make_record(seed: int = 0, lr: float = 0.01, status: str = "finished", fingerprint: str = "f00d" * 4,
                **fields) -> RunRecord:
    config = {"method": "wildcat", "dataset": "voc2012", "recipe": "bench", "train": {"lr": lr, "steps": 10},
              "model": {"backbone": "resnet18"}, "data": {}, "metrics": {"loc_map": {"tolerance": 18}}}
    config_id = make_config_id(config, fingerprint, VERSIONS)
    base = dict(
        run_id=make_run_id(config_id, seed), config_id=config_id, status=status, method="wildcat",
        dataset="voc2012", split="val", recipe="bench", seed=seed, config=config,
        dataset_identity={"name": "voc2012", "split": "val", "fingerprint": fingerprint, "num_images": 8},
        metrics={"loc_map": 0.5 + seed / 100, "cls_map": 0.7}, per_class={"loc_map": {"cat": 0.4, "dog": None}},
        class_names=["background", "cat", "dog"], effective_batch_size=16, world_size=1, deterministic=True,
        timings={"total_s": 1.5, "train_s": 1.0, "eval_s": 0.5, "train_images_per_s": 10.0, "eval_images_per_s": 20.0},
        environment={"python": "3.11"}, created_at="2025-01-01T00:00:00+00:00",
        finished_at="2025-01-01T00:01:00+00:00" if status == "finished" else None,
    )
    base.update(fields)
    return RunRecord(**base)


# -- ids -------------------------------------------------------------------------------------------
def test_canonical_json_and_hash_match_an_independent_sha256():
    value = {"b": 1, "a": [1.0, 0.1, (2, 3)], "c": {"y": None, "x": True}}
    text = canonical_json(value)
    assert text == '{"a":[1.0,0.1,[2,3]],"b":1,"c":{"x":true,"y":null}}'
    assert short_hash(value) == hashlib.sha256(text.encode()).hexdigest()[:16]


def test_ids_depend_on_config_fingerprint_versions_and_seed_only():
    config = {"train": {"lr": 0.01, "steps": 10}, "model": {"backbone": "resnet18"}}
    cid = make_config_id(config, "abc", VERSIONS)
    assert len(cid) == 16 and int(cid, 16) >= 0
    reordered = {"model": {"backbone": "resnet18"}, "train": {"steps": 10, "lr": 0.01}}
    assert make_config_id(reordered, "abc", VERSIONS) == cid
    assert make_config_id({**config, "train": {"lr": 0.0100001, "steps": 10}}, "abc", VERSIONS) != cid
    assert make_config_id(config, "abd", VERSIONS) != cid
    assert make_config_id(config, "abc", {**VERSIONS, "segbench": "0.2.0"}) != cid
    assert make_config_id(config, "abc", VERSIONS, split="val") != make_config_id(config, "abc", VERSIONS, split="test")
    assert make_run_id(cid, 0) == make_run_id(cid, 0) != make_run_id(cid, 1)
    assert make_run_id(cid, 0) == short_hash({"config_id": cid, "seed": 0})


# -- schema ------------------------------------------------------------------------------------------
def test_round_trip_keeps_every_field_and_unknown_keys(tmp_path):
    record = make_record(seed=3)
    data = record.to_dict()
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert list(data)[0] == "schema_version"
    again = RunRecord.from_json(record.to_json())
    assert again == record
    data["future_field"] = {"x": 1}
    newer = RunRecord.from_dict(data)
    assert newer.extra == {"future_field": {"x": 1}}
    assert newer.to_dict()["future_field"] == {"x": 1}


def test_nan_metrics_are_written_as_null():
    record = make_record(metrics={"miou": float("nan"), "loc_map": 0.25})
    text = record.to_json()
    assert "NaN" not in text
    assert json.loads(text)["metrics"] == {"miou": None, "loc_map": 0.25}
    assert RunRecord.from_json(text).metrics["miou"] is None


def test_multi_line_error_is_stored_on_one_line():
    record = make_record(status="failed", error="Traceback\n  loss is nan\n")
    assert record.to_dict()["error"] == "Traceback loss is nan"


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: json.dumps([1, 2]), "expected a JSON object"),
        (lambda d: json.dumps({k: v for k, v in d.items() if k not in ("seed", "metrics")}),
         "missing required field(s) seed, metrics"),
        (lambda d: json.dumps({**d, "status": "done"}), "status 'done'"),
        (lambda d: json.dumps({**d, "run_id": "../../etc"}), "run_id"),
        (lambda d: json.dumps({**d, "seed": "0"}), "field 'seed' must be int"),
        (lambda d: json.dumps({**d, "seed": True}), "field 'seed' must be int"),
        (lambda d: json.dumps({**d, "schema_version": 2}), "newer segbench"),
        (lambda d: json.dumps({**d, "metrics": {"miou": "high"}}), "metric 'miou'"),
        (lambda d: json.dumps({**d, "created_at": "yesterday"}), "created_at"),
        (lambda d: json.dumps({**d, "dataset_identity": {}}), "fingerprint"),
    ],
)
def test_invalid_record_file_names_the_file_and_the_problem(tmp_path, edit, expected):
    path = tmp_path / "bad.json"
    path.write_text(edit(make_record().to_dict()))
    with pytest.raises(RecordError) as info:
        RunRecord.load(path)
    message = str(info.value)
    assert isinstance(info.value, SegbenchError)
    assert message.startswith(str(path)) and expected in message
    assert "\n" not in message


# -- environment ----------------------------------------------------------------------------------------
def test_collect_environment_fields():
    env = collect_environment()
    assert set(env) >= {"python", "platform", "torch", "cuda", "device", "segbench", "plugins", "git_commit"}
    assert env["python"] == platform.python_version()
    import torch

    assert env["torch"] == torch.__version__
    assert (env["cuda"] is None) == (not torch.cuda.is_available())
    assert isinstance(env["plugins"], dict)
    json.dumps(env)  # JSON-serialisable


def test_git_commit_in_a_repo_outside_and_without_git(tmp_path, monkeypatch):
    assert git_commit(tmp_path) is None  # not a repository
    if shutil.which("git"):
        repo = tmp_path / "repo"
        repo.mkdir()
        git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
        subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
        subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "x"], cwd=repo, check=True)
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
        assert git_commit(repo) == head
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert git_commit(tmp_path) is None  # git absent


# -- store -------------------------------------------------------------------------------------------------
def test_default_runs_dir_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SEGBENCH_RUNS_DIR", raising=False)
    assert str(default_runs_dir()) == "runs"
    monkeypatch.setenv("SEGBENCH_RUNS_DIR", str(tmp_path / "elsewhere"))
    assert RunStore().root == tmp_path / "elsewhere"


def test_write_is_atomic_and_round_trips(tmp_path):
    store = RunStore(tmp_path / "runs" / "nested")
    record = make_record()
    path = store.write(record)
    assert path == store.path_for(record.run_id) == store.root / f"{record.run_id}.json"
    assert os.listdir(store.root) == [path.name]  # no temporary file left behind
    assert store.get(record.run_id) == record
    assert store.get(record.run_id[:6]) == record  # unique prefix
    with pytest.raises(StoreError, match="no run record"):
        store.get("0" * 16)


def test_update_of_the_same_attempt_but_never_of_another(tmp_path):
    store = RunStore(tmp_path)
    running = make_record(status="running", metrics={})
    store.write(running)
    finished = dataclasses.replace(running, status="finished", metrics={"loc_map": 0.5},
                                   finished_at="2025-01-01T00:09:00+00:00")
    store.write(finished)  # same run attempt (same created_at): allowed
    assert store.get(running.run_id).status == "finished"
    other = dataclasses.replace(finished, created_at="2025-02-01T00:00:00+00:00", metrics={"loc_map": 0.9})
    with pytest.raises(StoreError, match="re-run must be written as a new record"):
        store.write(other)
    assert store.get(running.run_id).metrics == {"loc_map": 0.5}


def test_force_rerun_creates_a_new_file_and_keeps_the_old(tmp_path):
    store = RunStore(tmp_path)
    first = store.write_new(make_record())
    assert first.run_id == make_record().run_id  # the base id when free
    rerun = make_record(created_at="2025-03-01T00:00:00+00:00", metrics={"loc_map": 0.9})
    second = store.write_new(rerun)
    third = store.write_new(rerun)
    assert second.run_id == f"{first.run_id}-2" and third.run_id == f"{first.run_id}-3"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{r.run_id}.json" for r in (first, second, third))
    assert store.get(first.run_id).metrics["loc_map"] == pytest.approx(0.5)
    assert store.get(second.run_id).metrics["loc_map"] == pytest.approx(0.9)
    assert [r.run_id for r in store.find(config_id=first.config_id, seed=0)] == [
        first.run_id, second.run_id, third.run_id]


@pytest.mark.skipif(os.name != "posix", reason="POSIX paths")
def test_unwritable_directory_is_a_one_line_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = RunStore(blocker / "runs")
    with pytest.raises(StoreError) as info:
        store.write(make_record())
    assert str(blocker / "runs") in str(info.value) and "\n" not in str(info.value)
    if os.geteuid() != 0:  # root ignores permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="locked"):
            RunStore(locked).write(make_record())


def test_path_for_rejects_path_tricks(tmp_path):
    with pytest.raises(StoreError, match="invalid run id"):
        RunStore(tmp_path).path_for("../secrets")


def test_iter_records_skips_bad_files_with_a_warning_and_ignores_temp_files(tmp_path):
    store = RunStore(tmp_path)
    good = store.write(make_record(seed=0))
    store.write(make_record(seed=1, status="failed", error="boom", metrics={}))
    (tmp_path / "broken.json").write_text('{"schema_version": 1, "run_id"')  # a partial file
    (tmp_path / f".{good.stem}.abc.tmp").write_text("{")
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(RecordWarning, match="broken.json"):
        records = list(store.iter_records())
    assert sorted(r.seed for r in records) == [0, 1]
    with pytest.warns(RecordWarning):
        assert [r.seed for r in store.iter_records(status="finished")] == [0]
    seen = []
    list(store.iter_records(on_error=lambda path, message: seen.append((path.name, message))))
    assert seen and seen[0][0] == "broken.json" and "not valid JSON" in seen[0][1]
    assert list(RunStore(tmp_path / "missing").iter_records()) == []


def _write_many(root: str, worker: int, count: int) -> None:
    store = RunStore(root)
    for i in range(count):
        store.write(make_record(seed=worker * 1000 + i))


def _rerun_many(root: str, count: int) -> None:
    store = RunStore(root)
    for _ in range(count):
        store.write_new(make_record(seed=7))


def _run_processes(target, args_list) -> None:
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    procs = [ctx.Process(target=target, args=args) for args in args_list]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_concurrent_writers_lose_nothing(tmp_path):
    _run_processes(_write_many, [(str(tmp_path), w, 20) for w in range(4)])
    store = RunStore(tmp_path)
    seeds = sorted(r.seed for r in store.iter_records())
    assert seeds == sorted(w * 1000 + i for w in range(4) for i in range(20))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_concurrent_reruns_of_one_config_each_get_a_new_file(tmp_path):
    _run_processes(_rerun_many, [(str(tmp_path), 5) for _ in range(4)])
    base = make_record(seed=7).run_id
    ids = sorted((r.run_id for r in RunStore(tmp_path).iter_records()), key=lambda s: (len(s), s))
    assert ids == [base] + [f"{base}-{n}" for n in range(2, 21)]


def test_a_reader_never_sees_a_partial_record_while_a_writer_writes(tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    writer = ctx.Process(target=_write_many, args=(str(tmp_path), 0, 40))
    writer.start()
    store, seen = RunStore(tmp_path), 0
    problems: list[str] = []
    while writer.is_alive() or seen < 40:
        seen = sum(1 for _ in store.iter_records(on_error=lambda path, message: problems.append(message)))
        if not writer.is_alive() and seen < 40:
            break
    writer.join(60)
    assert writer.exitcode == 0 and problems == [] and seen == 40
