"""The training loop: readable top to bottom, like torchvision's references/segmentation.

It resumes: a checkpoint holds the weights, the optimizer, scheduler and
gradient-scaler states, the RNG states and the data position (epoch and
batches consumed), so a resumed run takes exactly the steps the uninterrupted
run would have taken. A SIGINT/SIGTERM (see :mod:`segbench.engine.signals`)
ends the current step, writes a checkpoint and raises
:class:`TrainingInterrupted`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from segbench.engine.checkpoint import CHECKPOINT_KEEP
from segbench.engine.data import Normalizer, pad_targets, targets_to
from segbench.engine.device import autocast
from segbench.engine.distributed import SINGLE, DistInfo, any_true, training_module
from segbench.engine.optim import build_optimizer, build_scheduler
from segbench.engine.seeding import rng_state, set_rng_state
from segbench.errors import RunFailed


@dataclass
class TrainResult:
    steps: int
    images: int  # images this process trained on, over every attempt
    seconds: float  # training time over every attempt, checkpoint writing excluded
    final_loss: float
    start_step: int = 0  # where this attempt started (> 0 for a resumed run)
    checkpoint_seconds: float = 0.0  # time spent writing checkpoints, over every attempt
    sync_bn: bool = False  # SyncBatchNorm in effect
    ema: Any = None  # the weights' exponential moving average (an ``AveragedModel``) when ``config.ema`` is set
    loss_curve: list = field(default_factory=list)  # [step, smoothed loss] every ``config.log_every`` steps


def build_ema(model, decay: float):
    """torch's ``AveragedModel`` keeping an exponential moving average of ``model``'s weights and buffers."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def micro_batches(images, targets: list, size: int) -> list[tuple[Any, list, float]]:
    """``(images, targets, weight)`` chunks of at most ``size`` images; the weights (chunk / batch) sum to 1.

    Summing ``weight * loss(chunk)`` over the chunks gives the loss and the
    gradients of the whole batch for any loss that is a mean over its images.
    """
    total = images.shape[0]
    return [(images[i:i + size], targets[i:i + size], min(size, total - i) / total) for i in range(0, total, size)]


def _weighted(loss, weight: float):
    """``loss * weight``, and ``loss`` itself at weight 1 (no accumulation: the same graph as before)."""
    return loss if weight == 1.0 else loss * weight


def _no_sync(forward):
    """DDP's ``no_sync()`` (gradients kept local until the last chunk's backward), else a no-op context."""
    import contextlib

    return forward.no_sync() if hasattr(forward, "no_sync") else contextlib.nullcontext()


class TrainingInterrupted(KeyboardInterrupt):
    """A signal stopped training at a step boundary, after a checkpoint."""


@dataclass
class _Progress:
    step: int = 0
    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already consumed
    images: int = 0
    seconds: float = 0.0
    checkpoint_seconds: float = 0.0
    smoothed: float = float("nan")
    last_checkpoint: int = 0
    curve: list = field(default_factory=list)  # [step, smoothed loss] every log_every steps


_PROGRESS_KEYS = ("step", "epoch", "batch", "images", "seconds", "checkpoint_seconds", "smoothed")


def train(model, loader, config, device, mean, std, progress: bool = True, *, resume: dict | None = None,
          save: Callable[[int, dict], Any] | None = None, stop=None, dist: DistInfo = SINGLE,
          validation=None, steplog=None) -> TrainResult:
    """Run optimizer steps up to ``config.steps``; raise :class:`RunFailed` on a non-finite loss.

    ``loader`` draws from a :class:`segbench.engine.data.TrainSampler`.
    ``resume`` is the training state of a checkpoint whose weights are already
    in ``model``. With ``config.accumulate`` = K each loader batch holds K x
    ``config.batch_size`` images (one optimizer step); it is split into K
    forward/backward passes whose gradients add up to the whole batch's. With
    ``config.ema`` set, ``TrainResult.ema`` is the moving average of the
    weights, updated after every step and kept in the checkpoints. ``save(step, state)`` writes a checkpoint; it is called on
    every process at the same steps: every ``config.checkpoint_every`` steps,
    at an epoch end at least ``checkpoint_every / 4`` steps after the last
    checkpoint, at the last step, and when ``stop`` (a
    :class:`segbench.engine.signals.StopRequest`) is set.

    ``validation`` (:class:`segbench.engine.validation.Validation`, on every
    process) scores the evaluated weights at its steps, between the step and
    its checkpoint, RNG states untouched. Every ``config.log_every`` steps the
    smoothed loss joins ``TrainResult.loss_curve`` and, given ``steplog``
    (:class:`segbench.engine.steplog.StepLog`, rank 0), the step's scalars
    (:func:`step_scalars`) and the validation's metrics are written to it.
    Both are in the checkpoints. Training time excludes validation.
    """
    import torch
    from tqdm.auto import tqdm

    forward, synced = training_module(model, dist, device, config.sync_bn)
    model.train()
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp == "fp16" and device.type == "cuda")
    normalize = Normalizer(mean, std, device, config.channels_last)
    ema = build_ema(model, config.ema) if config.ema else None
    sampler = loader.sampler
    per_epoch = sampler.batches_per_epoch(loader.batch_size, loader.drop_last)
    state = _Progress()
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        scaler.load_state_dict(resume["scaler"])
        for key in _PROGRESS_KEYS:
            setattr(state, key, resume[key])
        state.last_checkpoint = state.step
        state.curve = [list(point) for point in resume.get("loss_curve", [])]
        if validation is not None and resume.get("validation") is not None:
            validation.load_state_dict(resume["validation"])
        set_rng_state(resume["rng"][dist.rank], device)
        if ema is not None:
            ema.load_state_dict(resume["ema"])
        if resume.get("loader_generator") is not None and loader.generator is not None:
            loader.generator.set_state(resume["loader_generator"])
    start_step, prior_seconds = state.step, state.seconds
    every = config.checkpoint_every
    attempt_start, attempt_checkpoints, attempt_validation = time.perf_counter(), 0.0, 0.0

    def trained_seconds() -> float:  # this attempt's training time so far
        return time.perf_counter() - attempt_start - attempt_checkpoints - attempt_validation

    mark = (0.0, state.images)  # (trained_seconds, images) at the last logged step: images/s since then

    def snapshot() -> dict:
        return {
            **{key: getattr(state, key) for key in _PROGRESS_KEYS},
            "seconds": prior_seconds + trained_seconds(), "loss_curve": state.curve,
            **({"validation": validation.state_dict()} if validation is not None else {}),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "loader_generator": loader.generator.get_state() if loader.generator is not None else None,
            "rng": rng_state(device), "world_size": dist.world_size,
            **({"ema": ema.state_dict()} if ema is not None else {}),
        }

    bar = tqdm(total=config.steps, initial=state.step, desc="train", unit="step", dynamic_ncols=True,
               disable=not progress or not dist.is_main,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # logs get a line every 10 s, not every step
    if stop is not None:
        stop.deferred = True
    try:
        while state.step < config.steps:
            sampler.set_epoch(state.epoch, start=state.batch * loader.batch_size)
            for batch in loader:
                images = normalize(batch["images"])  # images of different sizes padded, as their targets
                targets = pad_targets(targets_to(batch["targets"], device), batch["images"], images.shape[-2:])
                *early, final = micro_batches(images, targets, config.batch_size)
                logging = config.log_every > 0 and ((state.step + 1) % config.log_every == 0
                                                    or state.step + 1 == config.steps)
                terms: dict[str, float] = {}
                if early:  # gradient accumulation: each chunk's backward adds to the gradients, synced once
                    optimizer.zero_grad(set_to_none=True)
                value = 0.0
                for chunk_images, chunk_targets, weight in early:
                    with _no_sync(forward):
                        with autocast(device, config.amp):
                            parts = forward(chunk_images, chunk_targets)
                            part = _weighted(sum(parts.values()), weight)
                        value += float(part.detach())
                        if logging:
                            _add_terms(terms, parts, weight)
                        scaler.scale(part).backward()
                with autocast(device, config.amp):
                    losses = forward(final[0], final[1])
                loss = _weighted(sum(losses.values()), final[2])
                value += float(loss.detach())
                if logging:
                    _add_terms(terms, losses, final[2])
                epoch_end = state.batch + 1 == per_epoch
                last = state.step + 1 == config.steps
                due = every > 0 and (last or (state.step + 1) % every == 0
                                     or (epoch_end and state.step + 1 - state.last_checkpoint >= max(1, every // 4)))
                # one small all-reduce: every process agrees before backward (which all must join)
                bad, stopping = any_true([not math.isfinite(value), stop is not None and stop.requested], dist)
                if bad:
                    where = "" if math.isfinite(value) else " (" + ", ".join(
                        f"{k}={float(v.detach()):.4g}" for k, v in losses.items()) + ")"
                    raise RunFailed(f"non-finite loss at step {state.step + 1}{where or ' in another process'}; "
                                    "lower lr or check the data")
                if not early:
                    optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                if ema is not None:
                    ema.update_parameters(model)
                state.step += 1
                state.images += images.shape[0]
                state.batch = 0 if epoch_end else state.batch + 1
                state.epoch += int(epoch_end)
                state.smoothed = value if math.isnan(state.smoothed) else 0.95 * state.smoothed + 0.05 * value
                bar.update(1)
                if state.step % 10 == 0 or last:
                    bar.set_postfix(loss=f"{state.smoothed:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                                    refresh=False)
                scalars: dict[str, float] = {}
                if validation is not None and validation.due(state.step, last):
                    began = time.perf_counter()
                    scored = _validate(validation, state.step, ema.module if ema is not None else model, device)
                    attempt_validation += time.perf_counter() - began
                    validation.seconds += time.perf_counter() - began
                    scalars = {f"val/{key}": v for key, v in scored.items()}
                if logging:
                    state.curve.append([state.step, state.smoothed])
                    if steplog is not None:
                        now = trained_seconds()
                        speed = (state.images - mark[1]) * dist.world_size / max(now - mark[0], 1e-9)
                        mark = (now, state.images)
                        scalars = {**step_scalars(terms, value, state.smoothed, scheduler.get_last_lr()[0], speed,
                                                  device), **scalars}
                if scalars and steplog is not None:
                    steplog.write(state.step, scalars)
                if not dist.enabled:
                    stopping = stop is not None and stop.requested
                if save is not None and (due or stopping):
                    began = time.perf_counter()
                    save(state.step, snapshot())
                    if validation is not None:
                        validation.checkpointed(CHECKPOINT_KEEP)
                    attempt_checkpoints += time.perf_counter() - began
                    state.checkpoint_seconds += time.perf_counter() - began
                    state.last_checkpoint = state.step
                if stopping:
                    kept = " after a checkpoint" if save is not None else ""
                    raise TrainingInterrupted(f"stopped by {stop.signal or 'a signal in another process'} at "
                                              f"step {state.step}{kept}; run the same command to resume")
                if last or epoch_end:
                    break
    finally:
        if stop is not None:
            stop.deferred = False
        bar.close()
    return TrainResult(config.steps, state.images, prior_seconds + trained_seconds(), state.smoothed, start_step,
                       state.checkpoint_seconds, synced, ema, state.curve)


def _add_terms(terms: dict[str, float], losses: dict, weight: float) -> None:
    """Add each loss term of a pass, times its weight (its share of the batch), to ``terms``."""
    for key, term in losses.items():
        terms[key] = terms.get(key, 0.0) + float(term.detach()) * weight


def step_scalars(terms: dict[str, float], loss: float, smoothed: float, lr: float, images_per_s: float,
                 device) -> dict[str, float]:
    """A logged step's scalars: ``loss/<term>`` and ``loss`` (this step's), ``loss_smoothed`` (the moving average
    of the progress bar), ``lr``, ``images_per_s`` (all processes, since the last logged step), ``peak_rss_mb``
    and, on CUDA, ``cuda_max_allocated_mb``."""
    from segbench.engine.resources import cuda_peak_mb, peak_rss_mb

    scalars = {**{f"loss/{k}": v for k, v in terms.items()}, "loss": loss, "loss_smoothed": smoothed, "lr": lr,
               "images_per_s": round(images_per_s, 2), "peak_rss_mb": peak_rss_mb()}
    cuda = cuda_peak_mb(device)
    return {**scalars, "cuda_max_allocated_mb": cuda} if cuda is not None else scalars


def _validate(validation, step: int, module, device) -> dict[str, float]:
    """``validation(step, module)`` leaving the RNG states and the module's mode as they were."""
    saved, training = rng_state(device), module.training
    try:
        return validation(step, module)
    finally:
        set_rng_state(saved, device)
        module.train(training)
