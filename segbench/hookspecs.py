"""The hooks a segbench plugin may implement: the plugin author's contract.

A plugin is a module (found through the ``segbench`` entry-point group, or
built in) whose functions are marked with ``@segbench.hookimpl``. Each hook
below says when it is called and what it must do. ``docs/hooks.md`` documents
every hook; a test fails when one is missing there.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("segbench")


@hookspec
def register_methods(register: Callable[[Any], None]) -> None:
    """Register methods: call ``register(MethodSpec(...))`` once per method.

    Called once, when the registry is first needed (``segbench list``,
    ``segbench run``, ``segbench.create_method`` ...). Keep it cheap: import
    torch and model code inside ``MethodSpec.build``, not at module import.
    ``register`` validates each spec and raises ``ValueError`` on a bad one.
    """


@hookspec
def register_datasets(register: Callable[[Any], None]) -> None:
    """Register datasets: call ``register(DatasetSpec(...))`` once per dataset.

    Called once, when the registry is first needed. Same rules as
    ``register_methods``.
    """


@hookspec
def register_metrics(register: Callable[[Any], None]) -> None:
    """Register metrics: call ``register(MetricSpec(...))`` once per metric.

    Called once, when the registry is first needed. Same rules as
    ``register_methods``.
    """


@hookspec
def register_postprocessors(register: Callable[[Any], None]) -> None:
    """Register post-processors: call ``register(PostprocessorSpec(...))`` once per post-processor.

    A post-processor refines one image's prediction after the engine has
    resized it to the original image size (the dense CRF, the class-map
    rule). Runs choose them with ``segbench run --postprocess NAME``. Same
    rules as ``register_methods``.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the ``segbench`` command line.

    ``cli`` is the top-level ``click.Group``; decorate new commands with
    ``@cli.command()``. Called once when the command line is built.
    """


@hookspec
def run_started(run: Any) -> None:
    """Called when a run starts, before training.

    ``run`` is a :class:`segbench.engine.run.RunContext` carrying ``run_id``,
    ``method``, ``dataset``, ``recipe``, ``config`` (the resolved config),
    ``seed`` and ``record_path``. Use it for loggers (wandb, mlflow, ...).
    Must not modify the run. An exception switches the plugin's logging off
    for the run (one line on stderr); the run goes on.
    """


@hookspec
def run_step(run: Any, step: int, scalars: dict) -> None:
    """Called on rank 0 every ``log_every`` training steps, and after each validation (``eval_every``).

    ``scalars`` maps names to numbers: ``loss/<term>`` for each loss term,
    ``loss``, ``loss_smoothed``, ``lr``, ``images_per_s``, ``peak_rss_mb``
    (and ``cuda_max_allocated_mb`` on CUDA) at logged steps; ``val/<metric>``
    after a validation. Use it for loggers. An exception switches the plugin's
    logging off for the rest of the run; the run goes on.
    """


@hookspec
def run_finished(run: Any, record: dict) -> None:
    """Called after a run's record has been written, finished or failed.

    ``record`` is the run record as a dict (see ``docs/records.md``);
    ``record["status"]`` is ``finished``, ``failed`` or ``interrupted``.
    """
