"""``segbench show``: the class-map grid of a finished run."""

from __future__ import annotations

import torch
from click.testing import CliRunner

from segbench.cli import cli
from segbench.show import classes_to_show

TINY = {"steps": 2, "batch_size": 4, "num_train": 8, "num_val": 6, "image_size": 48}


def test_classes_to_show_prefers_labelled_classes_by_score_and_skips_background():
    labels = torch.tensor([0.0, 1.0, 0.0, 1.0])
    scores = torch.tensor([9.0, 0.5, 3.0, 2.0])
    assert classes_to_show(labels, scores, 0, 3) == [3, 1]
    assert classes_to_show(None, scores, 0, 2) == [2, 3]
    assert classes_to_show(torch.zeros(4), scores, 0, 1) == [2]


def test_show_writes_a_png_grid_and_never_overwrites(tmp_path):
    from PIL import Image

    from segbench.engine.run import run_experiment

    outcome = run_experiment("weldon", "shapes", overrides=TINY, runs=tmp_path, progress=False)
    out = tmp_path / "cams.png"
    runner = CliRunner()
    args = ["show", outcome.record["run_id"], "--out", str(out), "--images", "3", "--classes", "2",
            "--runs-dir", str(tmp_path)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 200 and png.height > 200
    before = out.stat().st_mtime_ns
    again = runner.invoke(cli, args)
    assert again.exit_code != 0 and "cams.png already exists; use --force" in str(again.exception)
    assert out.stat().st_mtime_ns == before
