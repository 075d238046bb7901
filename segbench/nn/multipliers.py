"""Per-parameter learning-rate and weight-decay multipliers, as Caffe's ``lr_mult`` / ``decay_mult``.

A model declares them with a method ``param_multipliers(head_lr_mult) ->
{parameter name: (lr_mult, decay_mult)}`` (or None for the engine's default:
backbone x1, the rest x ``head_lr_mult``); the engine groups parameters by
their pair and sets each group's lr and weight decay to ``lr * lr_mult`` and
``weight_decay * decay_mult`` (:func:`segbench.engine.optim.param_groups`).
"""

from __future__ import annotations

from typing import Any, Iterable


def caffe_multipliers(model: Any, new_layers: Iterable[str], new_mult: float = 10.0) -> dict[str, tuple[float, float]]:
    """The multipliers of the DeepLab / FCN prototxts: weights ``(1, 1)``, biases ``(2, 0)``; parameters under one
    of ``new_layers`` (module name prefixes, e.g. ``"head.fc8"``) ``(new_mult, 1)`` and ``(2 * new_mult, 0)``."""
    prefixes = tuple(f"{layer}." for layer in new_layers)
    table = {}
    for name, _ in model.named_parameters():
        mult = new_mult if name.startswith(prefixes) else 1.0
        table[name] = (2.0 * mult, 0.0) if name.endswith(".bias") else (mult, 1.0)
    return table
