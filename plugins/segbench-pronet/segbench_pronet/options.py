"""Checks of ProNet's options: each bad value is a one-line ConfigError naming the option and its range."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping

from segbench.errors import ConfigError

POOLS = ("lse", "max", "avg")
FUSES = ("mean", "cascade")
CROP_LABELS = ("image", "class")


def _fail(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"pronet: {name} must be {expected}, got {value!r}")


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in ``[lo, hi]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _fail(name, f"an integer in [{lo}, {hi}]", value)
    return value


def check_float(name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    """``value`` as a float in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > hi or value < lo or (lo_open and value == lo):
        raise _fail(name, f"a number in {'(' if lo_open else '['}{lo}, {hi}]", value)
    return float(value)


def check_floats(name: str, value: Any, lo: float, hi: float) -> tuple[float, ...]:
    """A number or a non-empty list of numbers, each in ``(lo, hi]``, as a tuple."""
    items = (value,) if isinstance(value, Real) and not isinstance(value, bool) else value
    if not isinstance(items, (tuple, list)) or not items:
        raise _fail(name, f"a number or a list of numbers in ({lo}, {hi}]", value)
    for item in items:
        ok = isinstance(item, Real) and not isinstance(item, bool) and math.isfinite(item)
        if not ok or not lo < item <= hi:
            raise _fail(name, f"a number or a list of numbers in ({lo}, {hi}]", value)
    return tuple(float(v) for v in items)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(name, f"one of {', '.join(choices)}", value)
    return value


def check_options(num_classes: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every ProNet option checked (and tuples normalised); raises :class:`ConfigError` on the first bad one."""
    from segbench_pronet import OPTIONS

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"pronet: unknown option(s) {', '.join(unknown)}; options are {', '.join(OPTIONS)}")
    o = {**OPTIONS, **options}
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"pronet: num_classes must be a positive integer, got {num_classes!r}")
    for key in ("backbone_args", "cascade_args"):
        if o[key] is not None and not isinstance(o[key], Mapping):
            raise _fail(key, "a dict of timm model arguments or None", o[key])
    o["scales"] = check_floats("scales", o["scales"], 0.0, 4.0)
    o["pool"] = check_choice("pool", o["pool"], POOLS)
    o["lse_r"] = check_float("lse_r", o["lse_r"], 0.0, 100.0, lo_open=True)
    o["box_sizes"] = check_floats("box_sizes", o["box_sizes"], 0.0, 1.0)
    o["top_k"] = check_int("top_k", o["top_k"], 1, 100)
    o["top_classes"] = check_int("top_classes", o["top_classes"], 0, num_classes)
    o["nms_iou"] = check_float("nms_iou", o["nms_iou"], 0.0, 1.0, lo_open=True)
    o["train_boxes"] = check_int("train_boxes", o["train_boxes"], 1, 64)
    o["crop_size"] = check_int("crop_size", o["crop_size"], 8, 512)
    o["crop_labels"] = check_choice("crop_labels", o["crop_labels"], CROP_LABELS)
    o["fuse"] = check_choice("fuse", o["fuse"], FUSES)
    o["cascade_weight"] = check_float("cascade_weight", o["cascade_weight"], 0.0, 100.0, lo_open=True)
    o["dropout"] = check_float("dropout", o["dropout"], 0.0, 0.99)
    if o["background"] is not None:
        o["background"] = check_int("background", o["background"], 0, num_classes - 1)
    return o
