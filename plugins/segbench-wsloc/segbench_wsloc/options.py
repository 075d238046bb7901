"""Checks of wsloc's options: each bad value is a one-line ConfigError naming the option and its range."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Mapping

from segbench.errors import ConfigError

HEADS = ("linear", "mlp")
REGIONS = ("crop", "mask")


def _fail(name: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"wsloc: {name} must be {expected}, got {value!r}")


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


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise _fail(name, f"one of {', '.join(choices)}", value)
    return value


def check_options(num_classes: int, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every option checked, over the defaults; raises :class:`ConfigError` on the first bad or unknown one."""
    from segbench_wsloc import OPTIONS

    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"wsloc: unknown option(s) {', '.join(unknown)}; options are {', '.join(OPTIONS)}")
    o = {**OPTIONS, **options}
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"wsloc: num_classes must be a positive integer, got {num_classes!r}")
    if o["backbone_args"] is not None and not isinstance(o["backbone_args"], Mapping):
        raise _fail("backbone_args", "a dict of timm model arguments or None", o["backbone_args"])
    o["head"] = check_choice("head", o["head"], HEADS)
    o["hidden"] = check_int("hidden", o["hidden"], 1, 16384)
    o["dropout"] = check_float("dropout", o["dropout"], 0.0, 0.99)
    o["region"] = check_choice("region", o["region"], REGIONS)
    o["beam"] = check_int("beam", o["beam"], 1, 64)
    o["beam_steps"] = check_int("beam_steps", o["beam_steps"], 0, 1000)
    o["step"] = check_int("step", o["step"], 1, 64)
    o["min_size"] = check_int("min_size", o["min_size"], 1, 256)
    o["top_classes"] = check_int("top_classes", o["top_classes"], 0, num_classes)
    o["max_boxes"] = check_int("max_boxes", o["max_boxes"], 1, 64)
    o["nms_iou"] = check_float("nms_iou", o["nms_iou"], 0.0, 1.0, lo_open=True)
    if o["background"] is not None:
        o["background"] = check_int("background", o["background"], 0, num_classes - 1)
    return o
