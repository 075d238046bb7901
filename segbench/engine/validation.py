"""Validation during training (``eval_every``): metric curves, and the best checkpoint by ``select``.

Every ``eval_every`` steps and at the last step the weights that the run
evaluates (the moving average with ``ema``) are scored on ``val_split``
exactly as the final evaluation scores them (eval size, test-time
augmentation, post-processors). Each value goes into the curve
``val/<metric>``; with ``select`` the weights of the best value so far are
written to ``best-NNNNNNNN.safetensors`` in the run's checkpoint directory and
the final evaluation scores them. Every segbench metric is higher-is-better,
so ``select`` maximises; a tie keeps the earlier step. The curves and the best
value and step are part of each checkpoint, so a resumed run ends with the
record of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from segbench.errors import ConfigError

BEST_PREFIX = "best-"


def validation_split(train_config: Any, dataset: Any) -> str:
    """The split validated on: ``val_split`` when set, else the dataset's ``eval_split`` (its validation split)."""
    return train_config.val_split or dataset.eval_split


def selectable(metric_specs: Mapping[str, Any]) -> dict[str, str]:
    """``{name or primary key: the key of the evaluation's metrics}`` of every metric the run computes."""
    from segbench.engine.evaluate import _key

    keys: dict[str, str] = {}
    for name, spec in metric_specs.items():
        keys[name] = keys[_key(name, spec.primary)] = _key(name, spec.primary)
    return keys


def check_validation(train_config: Any, dataset: Any, method: str, split: str,
                     metric_specs: Mapping[str, Any]) -> str | None:
    """A one-line ConfigError for an unknown ``val_split`` or a ``select`` the run has no metric for; a warning
    (returned) when the run validates on the split it reports, so that ``select`` would choose on its numbers."""
    if not train_config.eval_every:
        return None
    chosen = validation_split(train_config, dataset)
    if chosen not in dataset.splits:
        raise ConfigError(f"dataset '{dataset.name}' has no split '{chosen}' to validate on; "
                          f"splits: {', '.join(dataset.splits)}")
    if train_config.select and train_config.select not in selectable(metric_specs):
        names = ", ".join(sorted(metric_specs)) or "none"
        raise ConfigError(f"select={train_config.select} is not a metric of {method} on {dataset.name}; "
                          f"it has {names} (all higher-is-better)")
    if chosen == split:
        choose = "; select= picks the checkpoint on the reported numbers" if train_config.select else ""
        return (f"warning: validating on '{chosen}', the split this run reports{choose}; "
                f"--set val_split=NAME validates on another")
    return None


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass
class Validation:
    """Validates every ``every`` steps with ``score(module) -> metrics``; keeps the curves and the best step."""

    every: int
    split: str
    select: str  # the metrics key maximised ("" = none: the last step is evaluated)
    score: Callable[[Any], dict[str, float]]
    directory: Path  # the run's checkpoint directory: where the best weights go
    write: bool = True  # this process writes the best weights (rank 0)
    dist: Any = None  # DistInfo: under data parallelism every process scores rank 0's buffers
    curves: dict[str, list[list]] = field(default_factory=dict)
    best_value: float | None = None
    best_step: int | None = None
    seconds: float = 0.0
    _kept: list[int] = field(default_factory=list)  # best steps the newest checkpoints refer to

    def due(self, step: int, last: bool) -> bool:
        """Whether ``step`` (just taken) is validated: every ``every`` steps and the last."""
        return self.every > 0 and (step % self.every == 0 or last)

    def __call__(self, step: int, module: Any) -> dict[str, float]:
        """Score ``module`` at ``step``: the curves grow, and with ``select`` a better value writes its weights."""
        share_buffers(module, self.dist)
        metrics = self.score(module)
        for key, value in metrics.items():
            self.curves.setdefault(f"val/{key}", []).append([step, _finite(value)])
        value = _finite(metrics.get(self.select, math.nan)) if self.select else None
        if value is not None and (self.best_value is None or value > self.best_value):
            self.best_value, self.best_step = value, step
            if self.write:
                from segbench.engine.checkpoint import save_weights

                save_weights(module, self.best_path(step))
                self._prune()
        return metrics

    def best_path(self, step: int | None = None) -> Path:
        """The weights file of the best step (or of ``step``)."""
        return self.directory / f"{BEST_PREFIX}{self.best_step if step is None else step:08d}.safetensors"

    def checkpointed(self, keep: int) -> None:
        """A checkpoint was written: its best step stays on disk as long as one of the ``keep`` newest refers to it."""
        self._kept = [*self._kept, self.best_step][-keep:]
        if self.write:
            self._prune()

    def _prune(self) -> None:
        wanted = {self.best_path(s).name for s in {*self._kept, self.best_step} if s is not None}
        for path in self.directory.glob(f"{BEST_PREFIX}*.safetensors"):
            if path.name not in wanted:
                path.unlink(missing_ok=True)

    def state_dict(self) -> dict[str, Any]:
        return {"curves": self.curves, "best_value": self.best_value, "best_step": self.best_step,
                "seconds": self.seconds}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.curves = {k: [list(p) for p in v] for k, v in state["curves"].items()}
        self.best_value, self.best_step = state["best_value"], state["best_step"]
        self.seconds = float(state.get("seconds", 0.0))
        self._kept = [self.best_step]

    def summary(self, steps: int) -> dict[str, Any]:
        """What the record keeps (``validation``): the split, ``select``, and the step and value evaluated."""
        chosen = bool(self.select) and self.best_step is not None
        last = {k: v[-1] for k, v in self.curves.items() if v and v[-1][0] == steps}
        value = self.best_value if chosen else (last.get(f"val/{self.select}", [None, None])[1] if self.select
                                                 else None)
        return {"every": self.every, "split": self.split, "select": self.select or None,
                "chosen": "best" if chosen else "last", "step": self.best_step if chosen else steps, "value": value,
                "seconds": round(self.seconds, 3)}


def build_validation(*, config: Any, dataset_spec: Any, metric_specs: Mapping[str, Any], eval_set: Any, split: str,
                     root: str | None, seed: int, device: Any, postprocessors: list, dist: Any,
                     directory: Path) -> Validation | None:
    """The run's :class:`Validation` (None at ``eval_every=0``): its split built with the run's dataset options
    (the evaluation set itself when it is the same split), metrics of its own, a sharded loader."""
    train = config.train
    if not train.eval_every:
        return None
    from segbench.api import create_dataset
    from segbench.data.checks import validate
    from segbench.engine.data import eval_keys, make_eval_loader
    from segbench.engine.evaluate import evaluate
    from segbench.engine.run import metric_objects

    chosen = validation_split(train, dataset_spec)
    data = eval_set
    if chosen != split:
        data = create_dataset(dataset_spec.name, chosen, root=root, **config.data)
        validate(data)
        if hasattr(data, "select_targets"):
            data.select_targets(eval_keys(metric_specs))
        if len(data) == 0:
            raise ConfigError(f"dataset '{dataset_spec.name}': the validation split '{chosen}' is empty")
        if train.workers and hasattr(data, "materialize"):  # generate once, not once per loader worker
            data.materialize()
    metrics = metric_objects(metric_specs, config, dataset_spec, data)
    loader = make_eval_loader(data, train.eval_batch_size, seed, train.workers, dist)

    def score(module) -> dict[str, float]:
        return evaluate(module, loader, metrics, device, dataset_spec.mean, dataset_spec.std, amp=train.amp,
                        eval_size=train.eval_size, channels_last=train.channels_last, progress=False,
                        postprocessors=postprocessors, dist=dist, tta=train.tta, slide=train.slide).metrics

    select = selectable(metric_specs).get(train.select, "") if train.select else ""
    os.makedirs(directory, exist_ok=True)
    return Validation(train.eval_every, chosen, select, score, Path(directory), write=dist.is_main, dist=dist)


def share_buffers(module: Any, dist: Any) -> None:
    """Rank 0's buffers (batch-norm statistics) on every process: the weights it saves are those scored.

    DDP broadcasts rank 0's buffers at the start of each forward, so each
    process's own statistics of its last batch never reach training: this
    changes no step, only what an evaluation between steps sees.
    """
    if dist is None or not dist.enabled:
        return
    import torch.distributed

    for buffer in module.buffers():
        torch.distributed.broadcast(buffer.data, src=0)


def use_chosen(validation: Validation | None, module: Any, last_path: Path, dist: Any) -> str | None:
    """With ``select`` and a best step: the last weights to ``last_path`` (rank 0; its name is returned), then the
    best ones into ``module``, the module the run saves and evaluates. Otherwise nothing (None): the last is kept."""
    if validation is None or not validation.select or validation.best_step is None:
        return None
    from segbench.engine import distributed
    from segbench.engine.checkpoint import read_weights, save_weights

    if dist.is_main:
        save_weights(module, last_path)
    distributed.broadcast(None, dist)  # every process reads the best weights after rank 0 has written them
    module.load_state_dict(read_weights(validation.best_path()))
    return last_path.name
