"""One-line option checks for method builders: each returns the value or raises a ConfigError naming the option."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

from segbench.errors import ConfigError


def check_number(method: str, name: str, value: Any, low: float = 0.0, *, low_open: bool = True,
                 high: float = math.inf) -> float:
    """``value`` as a float, or a one-line :class:`ConfigError` naming ``name`` and the accepted range."""
    bracket = "(" if low_open else "["
    accepted = f"{bracket}{low:g}, {'inf)' if high == math.inf else f'{high:g}]'}"
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ConfigError(f"{method}: {name} must be a number in {accepted}, got {value!r}")
    return float(value)


def check_int(method: str, name: str, value: Any, low: int = 1) -> int:
    """``value`` as an int ``>= low``, or a one-line :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{method}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def check_bool(method: str, name: str, value: Any) -> bool:
    """``value`` if it is a bool, or a one-line :class:`ConfigError`."""
    if not isinstance(value, bool):
        raise ConfigError(f"{method}: {name} must be true or false, got {value!r}")
    return value


def check_choice(method: str, name: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``, or a one-line :class:`ConfigError`."""
    if value not in choices:
        raise ConfigError(f"{method}: {name} must be one of {', '.join(choices)}, got {value!r}")
    return value
