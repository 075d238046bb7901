"""Cost in the record: wall time, images per second, checkpoint time, peak memory; the new record fields."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from segbench.engine.resources import cuda_peak_mb, peak_rss_mb
from segbench.results.record import RecordError, RunRecord, make_config_id

TINY = {"steps": 4, "image_size": 32, "num_train": 8, "num_val": 5, "batch_size": 4, "threads": 1,
        "checkpoint_every": 2}


def test_record_reports_time_throughput_and_peak_memory(tmp_path):
    import torch

    from segbench.engine.run import run_experiment

    record = run_experiment("weldon", "shapes", overrides=TINY, runs=tmp_path, progress=False).record
    timings, resources = record["timings"], record["resources"]
    assert timings["train_steps"] == 4
    assert timings["total_s"] >= timings["train_s"] + timings["eval_s"] > 0
    assert timings["checkpoint_s"] > 0  # checkpoints at steps 2 and 4, timed apart from training
    for images, rate, seconds in ((4 * 4, "train_images_per_s", "train_s"), (5, "eval_images_per_s", "eval_s")):
        # images / seconds, up to the rounding of the seconds to 1 ms
        assert abs(timings[rate] * timings[seconds] - images) <= timings[rate] * 0.0005 + 0.01, (rate, timings)
    now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert 50 < resources["peak_rss_mb"] <= now + 0.1  # this process's peak so far, in MiB
    assert resources["cuda_max_allocated_mb"] is None and resources["processes"] == 1
    assert resources["threads"] == 1 == torch.get_num_threads()
    assert record["world_size"] == 1 and record["effective_batch_size"] == 4 and record["resumes"] == []


def test_peak_rss_follows_the_process():
    import torch

    before = peak_rss_mb()
    block = np.ones(96 * 2**20 // 8)  # 96 MiB, touched
    assert peak_rss_mb() >= before and peak_rss_mb() >= block.nbytes / 2**20
    assert cuda_peak_mb(torch.device("cpu")) is None


def _record(**fields) -> dict:
    base = RunRecord(run_id="0123456789abcdef", config_id="fedcba9876543210", status="finished", method="m",
                     dataset="d", split="val", recipe="quick", seed=0, dataset_identity={"fingerprint": "x"})
    return {**base.to_dict(), **fields}


def test_new_fields_round_trip_and_are_validated():
    data = _record(resources={"peak_rss_mb": 812.5, "cuda_max_allocated_mb": None},
                   resumes=[{"step": 500, "checkpoint": "step-00000500", "previous_status": "interrupted",
                             "at": "2025-01-01T00:00:00+00:00"}])
    record = RunRecord.from_dict(data)
    assert record.resources["peak_rss_mb"] == 812.5 and record.resumes[0]["step"] == 500
    assert RunRecord.from_json(record.to_json()).to_dict() == record.to_dict()
    with pytest.raises(RecordError, match="field 'resources' must be dict"):
        RunRecord.from_dict(_record(resources=[1]))
    with pytest.raises(RecordError, match="field 'resumes' must be list"):
        RunRecord.from_dict(_record(resumes={}))
    old = _record()
    del old["resources"], old["resumes"]
    assert RunRecord.from_dict(old).resumes == []  # records written before these fields still load


def test_world_size_enters_the_config_id_only_beyond_one_process():
    config, versions = {"train": {"batch_size": 8}}, {"segbench": "0.1.0", "plugins": {}}
    one = make_config_id(config, "abc", versions, split="val")
    assert make_config_id(config, "abc", versions, split="val", world_size=1) == one
    assert make_config_id(config, "abc", versions, split="val", world_size=2) != one


def test_record_keeps_parameters_and_flops_counted_independently(tmp_path):
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from segbench.api import create_method
    from segbench.engine.run import run_experiment

    record = run_experiment("weldon", "shapes", overrides={**TINY, "accumulate": 2}, runs=tmp_path,
                            progress=False).record
    cost = record["cost"]
    model = create_method("weldon", 7, **record["config"]["model"]).eval()
    assert cost["parameters"] == sum(p.numel() for p in model.parameters()) > 0
    assert cost["trainable_parameters"] == cost["parameters"]
    assert cost["flops_size"] == [32, 32]  # no crop in the recipe: the training images' size
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():  # real tensors on the CPU, not the meta device the engine counts on
        model.predict(torch.zeros(1, 3, 32, 32))
    assert cost["forward_gflops"] == round(counter.get_total_flops() / 1e9, 3) > 0
    assert record["effective_batch_size"] == 8  # batch 4 x 2 accumulated passes
    assert cost["train_gflops"] == round(3 * cost["forward_gflops"] * 4 * 8, 1)


def test_leaderboard_cost_columns_come_from_the_records(tmp_path):
    from segbench.results.leaderboard import build_leaderboard, leaderboard

    base = RunRecord(run_id="r0", config_id="c0", status="finished", method="fcn8s", dataset="shapes", split="val",
                     recipe="bench", seed=0, config={}, dataset_identity={"fingerprint": "f"},
                     metrics={"miou": 0.5}, created_at="2025-01-01T00:00:00+00:00",
                     finished_at="2025-01-01T00:01:00+00:00", effective_batch_size=16,
                     cost={"parameters": 1_234_567, "trainable_parameters": 1_234_567, "forward_gflops": 2.5,
                           "flops_size": [96, 96], "train_gflops": 12_000.0})
    old = RunRecord(run_id="r1", config_id="c1", status="finished", method="unet", dataset="shapes", split="val",
                    recipe="bench", seed=0, config={}, dataset_identity={"fingerprint": "f"}, metrics={"miou": 0.4},
                    created_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00")
    board = build_leaderboard([base, old], metric="miou", columns="params,gflops,train_tflops,batch")
    frame = board.display_frame()
    assert list(frame.columns) == ["Method", "Shapes", "Params (M)", "GFLOPs", "Train TFLOPs", "Batch"]
    first = frame[frame["Method"] == "FCN-8s"].iloc[0]
    assert (first["Params (M)"], first["GFLOPs"], first["Train TFLOPs"], first["Batch"]) == ("1.23", "2.50", "12.0",
                                                                                              "16")
    older = frame[frame["Method"] == "U-Net"].iloc[0]  # a record from before the cost field: empty cells
    assert older["Params (M)"] == older["GFLOPs"] == older["Batch"] == "-"
    assert "Cost columns are the runs' own" in board.to_markdown()
    with pytest.raises(Exception, match=r"unknown --columns flops; columns: params, gflops, train_tflops, batch"):
        build_leaderboard([base], metric="miou", columns="flops")
    with pytest.raises(Exception, match="drop --columns"):
        leaderboard(tmp_path, metric="miou", per_class=True, columns="params")


def test_loc_map_tables_say_which_confidence_ranked_the_images():
    from segbench.results.leaderboard import build_leaderboard

    def record(run_id: str, confidence: str | None) -> RunRecord:
        metrics = {"loc_map": {"tolerance": 4, **({"confidence": confidence} if confidence else {})}}
        return RunRecord(run_id=run_id, config_id=run_id, status="finished", method="weldon", dataset="shapes",
                         split="val", recipe="quick", seed=0, config={"metrics": metrics},
                         dataset_identity={"fingerprint": "f"}, metrics={"loc_map": 0.5},
                         created_at="2025-01-01T00:00:00+00:00", finished_at="2025-01-01T00:01:00+00:00")

    old = build_leaderboard([record("a", None)], metric="loc_map").to_markdown()
    assert "loc_map ranks each class's images by the class map's maximum (Oquab et al.)" in old
    both = build_leaderboard([record("a", None), record("b", "image_score")], metric="loc_map").to_markdown()
    assert "by the class map's maximum (Oquab et al.) or the method's image score" in both
