"""Data parallelism: shards, merged metric states, and a real 2-process gloo run (evaluation equals 1 process)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch

from segbench.cli import main
from segbench.engine.data import ShardedEvalSampler, TrainSampler
from segbench.engine.distributed import check_distributable, check_nproc, merge_states
from segbench.errors import ConfigError

# 7 evaluation images (odd) in batches of 2: the shards of 2 processes hold 4 and 3 images
TINY = {"steps": 6, "image_size": 32, "num_train": 16, "num_val": 7, "batch_size": 4, "eval_batch_size": 2,
        "threads": 1}


@pytest.mark.parametrize("size,batch,world", [(7, 2, 2), (7, 3, 2), (10, 4, 3), (5, 2, 4), (2, 4, 3), (1, 1, 1)])
def test_eval_shards_cover_every_image_once_in_order(size, batch, world):
    shards = [list(ShardedEvalSampler(size, batch, rank, world)) for rank in range(world)]
    assert sum(shards, []) == list(range(size))  # concatenated in rank order: the dataset order, no repeats
    starts = [s[0] for s in shards if s]
    assert all(start % batch == 0 for start in starts)  # batches are those of one process


def test_train_sampler_shards_one_permutation_and_resumes_mid_epoch():
    one = TrainSampler(10, seed=3)
    items = list(one)
    assert sorted(i for i, _ in items) == list(range(10))
    two = [TrainSampler(10, seed=3, rank=r, world_size=2) for r in range(2)]
    halves = [list(s) for s in two]
    assert sorted(i for h in halves for i, _ in h) == list(range(10))  # disjoint, complete
    assert {seed for h in halves for _, seed in h} == {seed for _, seed in items}  # same per-sample seeds
    one.set_epoch(0, start=4)
    assert list(one) == items[4:] and len(one) == 6
    one.set_epoch(1)
    assert [i for i, _ in one] != [i for i, _ in items]  # reshuffled each epoch
    three = [list(TrainSampler(10, seed=3, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 4 for s in three)  # padded to 12 by wrapping around


def _predictions(target: dict, classes: int, generator: torch.Generator) -> dict:
    h, w = target["mask"].shape
    n = len(target["classes"])
    return {
        "scores": torch.rand(classes, generator=generator),
        "score_maps": torch.rand(classes, h, w, generator=generator),
        "mask": torch.randint(0, classes, (h, w), generator=generator),
        "instances": {"boxes": target["boxes"].float() + torch.rand(n, 4, generator=generator),
                      "classes": target["classes"], "scores": torch.rand(n, generator=generator),
                      "masks": target["masks"].float() * torch.rand(n, 1, 1, generator=generator)},
    }


def test_merged_states_of_shards_equal_one_process_for_every_builtin_metric():
    from segbench.api import create_dataset
    from segbench.plugins import get_registry

    registry = get_registry()
    data = create_dataset("shapes", "val", image_size=32, num_val=7)
    spec = registry.dataset("shapes")
    generator = torch.Generator().manual_seed(0)
    samples = [data[i] for i in range(len(data))]
    predictions = [_predictions(s["target"], spec.num_classes, generator) for s in samples]
    targets = [s["target"] for s in samples]
    names = [n for n, m in registry.metrics.items() if m.plugin == "segbench.metrics.builtin"]
    assert {"miou", "cls_map", "loc_map", "coco_ap", "accuracy"} <= set(names)
    for name in names:
        metric_spec = registry.metric(name)
        options = {k: v for k, v in {"num_classes": spec.num_classes, "background": spec.background}.items()
                   if k in metric_spec.options and not (name == "miou" and k == "background")}
        whole, shards = metric_spec.build(**options), [metric_spec.build(**options) for _ in range(2)]
        check_distributable({name: whole}, 2)
        for lo, hi in ((0, 2), (2, 4), (4, 6), (6, 7)):  # batches of 2, as the engine feeds them
            whole.update(predictions[lo:hi], targets[lo:hi])
            shards[0 if hi <= 4 else 1].update(predictions[lo:hi], targets[lo:hi])
        merged = metric_spec.build(**options)
        merged.load_state_tensors(merge_states([s.state_tensors() for s in shards], whole.state_reductions))
        expected, got = whole.compute(), merged.compute()
        assert expected.keys() == got.keys()
        for key in expected:  # exactly equal (NaN where undefined, e.g. accuracy on multi-label data)
            assert got[key] == expected[key] or (math.isnan(got[key]) and math.isnan(expected[key])), (name, key)


def test_metric_without_states_cannot_run_on_several_processes():
    class Plain:
        def compute(self):
            return {}

    check_distributable({"plain": Plain()}, 1)
    with pytest.raises(ConfigError, match="metric 'plain' has no state_tensors"):
        check_distributable({"plain": Plain()}, 2)


def test_too_many_processes_is_a_one_line_error(capsys):
    with pytest.raises(ConfigError, match=r"--nproc 999 on the CPU needs 999 cores"):
        check_nproc(999, "cpu")
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "-m", "weldon", "--device", "cpu", "--nproc", "999", "-q"])
    err = capsys.readouterr().err
    assert exit_info.value.code != 0 and err.count("\n") == 1 and "--nproc 999" in err


def test_nproc_restarts_the_same_command_under_torchrun(monkeypatch, tmp_path):
    calls = []

    class Child:
        def __init__(self, command, **kwargs):
            calls.append((command, kwargs))

        def wait(self):
            return 0

        def send_signal(self, signum):
            pass

    monkeypatch.setattr(subprocess, "Popen", Child)
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    main(["run", "-m", "weldon", "--device", "cpu", "--nproc", "2", "--set", "steps=3", "--set", "lr=0.1",
          "--runs-dir", str(tmp_path), "-q", "--nondeterministic"])
    (command, kwargs), = calls
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    args = command[6:]
    assert args[:2] == ["segbench", "run"] and "--nproc" not in args
    assert args[args.index("--method") + 1] == "weldon" and args[args.index("--device") + 1] == "cpu"
    assert [args[i + 1] for i, a in enumerate(args) if a == "--set"] == ["steps=3", "lr=0.1"]
    assert "--quiet" in args and "--nondeterministic" in args and args[args.index("--runs-dir") + 1] == str(tmp_path)
    assert kwargs.get("start_new_session") is True
    assert not list(tmp_path.iterdir())  # this process ran nothing itself


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch.distributed as tdist
    tdist.init_process_group("gloo")
    from segbench.engine.reeval import evaluate_run
    from segbench.engine.run import run_experiment
    runs, run_id, runs2, out = sys.argv[1:5]
    evaluated = evaluate_run(run_id, runs=runs, progress=False)
    outcome = run_experiment("weldon", "shapes", overrides=json.loads(sys.argv[5]), runs=runs2, progress=False)
    if tdist.get_rank() == 0:
        json.dump({"eval": evaluated["metrics"], "run": outcome.record}, open(out, "w"))
    tdist.destroy_process_group()
""")


def test_two_gloo_processes_evaluate_exactly_like_one_and_train(tmp_path):
    from segbench.engine.reeval import evaluate_run
    from segbench.engine.run import run_experiment

    one = run_experiment("weldon", "shapes", overrides=TINY, runs=tmp_path / "one", progress=False)
    alone = evaluate_run(one.record["run_id"], runs=tmp_path / "one", progress=False)["metrics"]
    script = tmp_path / "ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
         str(tmp_path / "one"), one.record["run_id"], str(tmp_path / "two"), str(out), json.dumps(TINY)],
        capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["eval"] == alone  # every metric, bit for bit, over shards of 4 and 3 images
    assert {k: v for k, v in one.record["metrics"].items() if k in alone} == alone
    run = result["run"]
    assert run["status"] == "finished" and run["world_size"] == 2 and run["effective_batch_size"] == 8
    assert run["resources"]["processes"] == 2 and run["dataset_identity"]["num_images"] == 7
    assert run["metrics"]["cls_map@prior"] == one.record["metrics"]["cls_map@prior"]  # labels of all 7 images
    assert run["config_id"] != one.record["config_id"]  # never pooled with 1-process runs
    confusion = torch.tensor(run["confusion"]["miou"])  # the sum over both shards: every pixel of the 7 images
    assert int(confusion.sum()) == int(torch.tensor(one.record["confusion"]["miou"]).sum()) > 0
    assert confusion.sum(1).tolist() == torch.tensor(one.record["confusion"]["miou"]).sum(1).tolist()  # same truth
    files = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert files == [f"{run['run_id']}.json", f"{run['run_id']}.log.csv",
                     f"{run['run_id']}.safetensors"]  # rank 0 alone wrote; no checkpoints left
    again = evaluate_run(run["run_id"], runs=tmp_path / "two", progress=False)["metrics"]
    assert {k: v for k, v in run["metrics"].items() if k in again} == again  # rank 0's buffers were scored
