"""segbench-echo: the smallest segbench method, a template for new plugins and a test double.

This module is imported whenever the registry loads (``segbench list``,
``segbench --help``), so it imports no torch: the model lives in
``segbench_echo.model`` and is imported inside :func:`build`.
"""

from __future__ import annotations

from segbench import MethodSpec, Recipe, hookimpl

__version__ = "0.1.0"

OPTIONS = {"downsample": 8}
"""Every option ``build`` accepts, with its default (``--set downsample=4``)."""

RECIPES = (
    Recipe(
        "quick",
        "CPU, seconds on shapes: shows the harness end to end",
        train={"steps": 60, "batch_size": 8, "lr": 0.2, "optimizer": "sgd", "schedule": "constant",
               "weight_decay": 0.0, "log_every": 20},
    ),
    Recipe(
        "bench",
        "the shapes leaderboard schedule (well under a minute on 2 cores)",
        train={"steps": 300, "batch_size": 16, "lr": 0.2, "optimizer": "sgd", "schedule": "poly",
               "weight_decay": 0.0, "log_every": 50},
    ),
    Recipe(
        "paper",
        "echo has no paper: the bench schedule, longer, on a finer grid",
        train={"steps": 1000, "batch_size": 16, "lr": 0.2, "optimizer": "sgd", "schedule": "poly",
               "weight_decay": 0.0, "log_every": 100},
        model={"downsample": 4},
    ),
)


def build(num_classes: int, downsample: int = 8):
    """The echo model for ``num_classes`` classes (torch is imported here, not above)."""
    from segbench_echo.model import Echo

    return Echo(num_classes, downsample=downsample)


@hookimpl
def register_methods(register) -> None:
    """Register the ``echo`` method."""
    register(
        MethodSpec(
            name="echo",
            build=build,
            supervision="image",
            outputs={"scores", "score_maps"},
            options=OPTIONS,
            recipes=RECIPES,
            description="1x1 conv on a downsampled image, global max pooling: a template and test double",
        )
    )
