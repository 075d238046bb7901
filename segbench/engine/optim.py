"""Optimizers and learning-rate schedules from a :class:`TrainConfig`."""

from __future__ import annotations

import math


def param_groups(model, config) -> list[dict]:
    """The model's own ``param_groups(lr)`` when it has one; else its ``param_multipliers(head_lr_mult)`` (Caffe's
    ``lr_mult`` / ``decay_mult`` per parameter, see :mod:`segbench.nn.multipliers`) when it returns a table; else
    backbone at ``lr`` and the rest at ``lr * head_lr_mult``."""
    if hasattr(model, "param_groups"):
        return model.param_groups(config.lr)
    table = model.param_multipliers(config.head_lr_mult) if hasattr(model, "param_multipliers") else None
    if table is not None:
        grouped: dict[tuple[float, float], list] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                grouped.setdefault(tuple(table.get(name, (1.0, 1.0))), []).append(param)
        return [{"params": params, "lr": config.lr * lr_mult, "weight_decay": config.weight_decay * decay_mult,
                 "lr_mult": lr_mult, "decay_mult": decay_mult} for (lr_mult, decay_mult), params in grouped.items()]
    backbone, head = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (backbone if name.startswith("backbone.") else head).append(param)
    groups = []
    if backbone:
        groups.append({"params": backbone, "lr": config.lr})
    if head:
        groups.append({"params": head, "lr": config.lr * config.head_lr_mult})
    return groups


def build_optimizer(model, config):
    """SGD (momentum, weight decay) or AdamW."""
    import torch

    groups = param_groups(model, config)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def lr_factor(step: int, config) -> float:
    """The multiplier of each group's base lr at ``step`` (0-based): linear warmup, then poly, cosine, step or constant.

    ``step`` is Caffe's ``multistep`` policy: ``gamma ** (milestones passed)``,
    a milestone ``m`` counting from step ``m`` on (warm-up included in the count).
    """
    total = max(config.steps, 1)
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "step":
        return config.gamma ** sum(1 for m in config.milestones if step >= m)
    start = min(config.warmup_steps, total - 1)
    progress = (step - start) / max(total - start, 1)
    progress = min(max(progress, 0.0), 1.0)
    if config.schedule == "poly":
        return (1.0 - progress) ** config.poly_power
    if config.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def build_scheduler(optimizer, config):
    """A ``LambdaLR`` stepping once per optimizer step."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
