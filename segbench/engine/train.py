"""The training loop: readable top to bottom, like torchvision's references/segmentation."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

from segbench.engine.data import Normalizer, infinite, targets_to
from segbench.engine.device import autocast
from segbench.engine.optim import build_optimizer, build_scheduler
from segbench.errors import RunFailed


@dataclass
class TrainResult:
    steps: int
    images: int
    seconds: float
    final_loss: float


def train(model, loader, config, device, mean, std, progress: bool = True) -> TrainResult:
    """Run ``config.steps`` optimizer steps; raise :class:`RunFailed` on a non-finite loss."""
    import torch
    from tqdm.auto import tqdm

    model.train()
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")
    normalize = Normalizer(mean, std, device, config.channels_last)
    batches = infinite(loader)
    images_seen, smoothed = 0, float("nan")
    start = time.perf_counter()
    bar = tqdm(total=config.steps, desc="train", unit="step", disable=not progress, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # logs get a line every 10 s, not every step
    for step in range(config.steps):
        batch = next(batches)
        images = normalize(batch["images"])
        targets = targets_to(batch["targets"], device)
        with autocast(device, config.amp):
            losses = model.loss(images, targets)
        loss = sum(losses.values())
        value = float(loss.detach())
        if not math.isfinite(value):
            bar.close()
            parts = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
            raise RunFailed(f"non-finite loss at step {step + 1} ({parts}); lower lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        images_seen += images.shape[0]
        smoothed = value if math.isnan(smoothed) else 0.95 * smoothed + 0.05 * value
        bar.update(1)
        if step % 10 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{smoothed:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
    bar.close()
    return TrainResult(config.steps, images_seen, time.perf_counter() - start, smoothed)
