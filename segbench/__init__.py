"""segbench: a plugin-based benchmark harness for segmentation and weakly supervised localization.

The public API. Importing ``segbench`` does not import torch.
"""

from __future__ import annotations

import pluggy

from segbench.api import (
    create_dataset,
    create_method,
    create_metric,
    create_postprocessor,
    list_datasets,
    list_methods,
    list_metrics,
    list_postprocessors,
)
from segbench.errors import ConfigError, DataError, SegbenchError, UnknownNameError
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec, PostprocessorSpec, Recipe


def _version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    from importlib import metadata

    try:
        return metadata.version("segbench")
    except metadata.PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()

hookimpl = pluggy.HookimplMarker("segbench")
"""Marker for plugin hook implementations: ``@segbench.hookimpl``."""

__all__ = [
    "ConfigError",
    "DataError",
    "DatasetSpec",
    "MethodSpec",
    "MetricSpec",
    "PostprocessorSpec",
    "Recipe",
    "SegbenchError",
    "UnknownNameError",
    "__version__",
    "create_dataset",
    "create_method",
    "create_metric",
    "create_postprocessor",
    "hookimpl",
    "list_datasets",
    "list_methods",
    "list_metrics",
    "list_postprocessors",
]
