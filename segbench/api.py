"""The Python API the CLI is built on: create and list methods, datasets, metrics and post-processors."""

from __future__ import annotations

import os
from typing import Any

from segbench.errors import ConfigError
from segbench.plugins import get_registry


def list_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return sorted(get_registry().methods)


def list_datasets() -> list[str]:
    """Names of every registered dataset, sorted."""
    return sorted(get_registry().datasets)


def list_metrics() -> list[str]:
    """Names of every registered metric, sorted."""
    return sorted(get_registry().metrics)


def list_postprocessors() -> list[str]:
    """Names of every registered post-processor, sorted."""
    return sorted(get_registry().postprocessors)


def create_method(name: str, num_classes: int, **options: Any):
    """Build method ``name`` for ``num_classes`` classes; ``options`` override its defaults."""
    spec = get_registry().method(name)
    return spec.build(num_classes, **merge_options(spec.options, options, f"method '{name}'"))


def create_dataset(name: str, split: str | None = None, root: str | os.PathLike | None = None, **options: Any):
    """Build dataset ``name`` on ``split`` (its evaluation split by default).

    ``root`` defaults to ``$SEGBENCH_DATA/<name>`` for datasets read from disk.
    """
    spec = get_registry().dataset(name)
    split = split or spec.eval_split
    if split not in spec.splits:
        raise ConfigError(f"dataset '{name}' has no split '{split}'; splits: {', '.join(spec.splits)}")
    if root is None and spec.needs_root and os.environ.get("SEGBENCH_DATA"):
        root = os.path.join(os.environ["SEGBENCH_DATA"], name)
    return spec.build(root, split, **merge_options(spec.options, options, f"dataset '{name}'"))


def create_metric(name: str, **options: Any):
    """Build metric ``name``; ``options`` (``num_classes``, ...) override its defaults."""
    spec = get_registry().metric(name)
    return spec.build(**merge_options(spec.options, options, f"metric '{name}'"))


def create_postprocessor(name: str, **options: Any):
    """Build post-processor ``name``: a callable ``(image, prediction) -> prediction``."""
    spec = get_registry().postprocessor(name)
    return spec.build(**merge_options(spec.options, options, f"postprocessor '{name}'"))


def merge_options(defaults: dict, overrides: dict, owner: str) -> dict:
    """``defaults`` updated with ``overrides``; an unknown key is a ``ConfigError``."""
    unknown = set(overrides) - set(defaults)
    if unknown:
        raise ConfigError(
            f"{owner} has no option(s) {', '.join(sorted(unknown))}; "
            f"options: {', '.join(sorted(defaults)) or 'none'}"
        )
    return {**defaults, **overrides}
