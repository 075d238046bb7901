"""The training loop's overhead: ``segbench run`` against a bare PyTorch loop, and validation's share (not a test).

    python benchmarks/train_overhead.py [--steps 25] [--repeats 2] [--val-steps 200] [--only weldon,fcn8s]

For each method's ``quick`` recipe on ``shapes`` (WELDON, FCN-8s, Mask R-CNN):

- **segbench**: ``run_experiment`` with logging and checkpointing on (``log_every=10``: the ``run_step`` hook,
  ``{run_id}.log.csv`` and, through ``SEGBENCH_LOGGERS=tensorboard``, TensorBoard event files;
  ``checkpoint_every`` = steps / 2 plus the last step), ``steps`` steps. Its rate is ``train_steps / (train_s +
  checkpoint_s)`` from the record: the loop with everything it does, data loading included, start-up and the
  final evaluation not (which runs on 50 ``val`` images, ``num_val=50``, to keep the benchmark short).
- **bare**: the loop a user would write over the same model (``MethodSpec.build`` with the recipe's options, the
  same seed), the same data (the shapes training split with the recipe's options, the target keys the method
  reads, shuffled, batches of the recipe's size), the same optimizer and schedule (``build_optimizer`` /
  ``build_scheduler`` of the recipe), the same threads: normalise, ``model.loss``, backward, step. It is timed from
  its first batch to its last step, as ``train_s`` is.
- Both train without augmentation (``hflip=false``), the only transform the quick recipes use, so they do the
  same work. The two alternate ``repeats`` times; the best rate of each is kept (the machine is shared).

Then **validation**: WELDON's quick recipe for ``val-steps`` steps with ``eval_every=100`` on the 500 ``val``
images: ``timings.val_s`` as a share of the run's wall time (``timings.total_s``: start-up, training,
validation, checkpoints and the final evaluation on the same 500 images).

Measured numbers: ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
os.environ.setdefault("HF_HUB_OFFLINE", "1")

METHODS = ("weldon", "fcn8s", "mask_rcnn")
SAME = {"hflip": False}  # no augmentation on either side


def segbench_rate(method: str, steps: int, runs: Path, **extra) -> tuple[float, dict]:
    """Steps per second of ``segbench run`` (loop + logging + checkpoints), and the record."""
    from segbench.engine.run import run_experiment

    overrides = {**SAME, "steps": steps, "log_every": 10, "checkpoint_every": max(1, steps // 2), **extra}
    record = run_experiment(method, "shapes", recipe="quick", overrides=overrides, runs=runs, progress=False,
                            force=True).record
    timings = record["timings"]
    return timings["train_steps"] / (timings["train_s"] + timings["checkpoint_s"]), record


def bare_rate(method: str, steps: int) -> float:
    """Steps per second of a plain PyTorch loop over the same model, data, batches and optimizer."""
    import torch

    import segbench
    from segbench.engine.config import resolve_config
    from segbench.engine.data import training_keys
    from segbench.engine.optim import build_optimizer, build_scheduler
    from segbench.plugins import get_registry

    registry = get_registry()
    spec, shapes = registry.method(method), registry.dataset("shapes")
    config = resolve_config(spec, shapes, {}, "quick", {**SAME, "steps": steps})
    train = config.train
    torch.set_num_threads(train.threads or torch.get_num_threads())
    torch.manual_seed(0)
    data = segbench.create_dataset("shapes", shapes.train_split, **config.data)
    keys = training_keys(spec.requires_annotations)
    data.select_targets(keys)
    model = spec.build(shapes.num_classes, **config.model)
    if train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(model, train)
    scheduler = build_scheduler(optimizer, train)
    mean = torch.tensor(shapes.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(shapes.std).view(1, 3, 1, 1) * 255

    def plain(sample):
        target = {k: v.as_subclass(torch.Tensor) for k, v in sample["target"].items() if k in keys}
        return sample["image"].as_subclass(torch.Tensor), target

    loader = torch.utils.data.DataLoader(data, batch_size=train.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=lambda samples: [plain(s) for s in samples],
                                         generator=torch.Generator().manual_seed(0))
    done, start = 0, time.perf_counter()
    while done < steps:
        for batch in loader:
            images = (torch.stack([image for image, _ in batch]).float() - mean) / std
            if train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            loss = sum(model.loss(images, [target for _, target in batch]).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
            optimizer.step()
            scheduler.step()
            done += 1
            if done == steps:
                break
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--val-steps", type=int, default=200)
    parser.add_argument("--only", default=",".join(METHODS))
    args = parser.parse_args()
    os.environ["SEGBENCH_LOGGERS"] = "tensorboard"
    load = os.getloadavg()[0]
    began = time.perf_counter()
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, load {load:.2f}; {args.steps} steps, best of {args.repeats}")
    print(f"| method | bare steps/s | segbench steps/s | ratio |\n|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.only.split(","):
            bare, ours = [], []
            for _ in range(args.repeats):
                bare.append(bare_rate(method, args.steps))
                ours.append(segbench_rate(method, args.steps, Path(tmp) / method, num_val=50)[0])
            print(f"| {method} | {max(bare):.2f} | {max(ours):.2f} | {max(ours) / max(bare):.3f} |", flush=True)
        if args.val_steps:
            val_rate, validated = segbench_rate("weldon", args.val_steps, Path(tmp) / "val", eval_every=100)
            t = validated["timings"]
            print(f"validation: weldon quick, {args.val_steps} steps, eval_every=100 on "
                  f"{validated['dataset_identity']['num_images']} val images: {len(validated['curves']['val/miou'])} "
                  f"validations, val_s {t['val_s']:.1f} s of total_s {t['total_s']:.1f} s "
                  f"({100 * t['val_s'] / t['total_s']:.1f} % of the wall time); training {val_rate:.2f} steps/s, "
                  f"{t['val_s'] / len(validated['curves']['val/miou']):.1f} s per validation")
    print(f"load {os.getloadavg()[0]:.2f} at the end; {time.perf_counter() - began:.0f} s in all")


if __name__ == "__main__":
    main()
