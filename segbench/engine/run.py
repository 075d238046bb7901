"""One run: resolve the config, train, evaluate, write the record. The CLI's ``run`` is a thin layer on this."""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from segbench.engine.config import ResolvedConfig, resolve_config
from segbench.errors import ConfigError, RunFailed, SegbenchError
from segbench.plugins import Registry, get_registry
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec

DEFAULT_RUNS_DIR = "runs"


@dataclass
class RunContext:
    """What hooks see of a run (``run_started`` / ``run_finished``)."""

    run_id: str
    config_id: str
    method: str
    dataset: str
    split: str
    recipe: str
    seed: int
    config: dict
    record_path: Path
    weights_path: Path
    device: str = "cpu"
    extra: dict = field(default_factory=dict)


@dataclass
class RunOutcome:
    """What ``run_experiment`` returns: the record, where it lives, and whether it was reused."""

    record: dict
    path: Path
    reused: bool = False


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$SEGBENCH_RUNS_DIR``, else ``./runs``."""
    return Path(path or os.environ.get("SEGBENCH_RUNS_DIR") or DEFAULT_RUNS_DIR)


def applicable_metrics(method: MethodSpec, dataset: DatasetSpec, registry: Registry,
                       requested: Sequence[str] | None = None) -> dict[str, MetricSpec]:
    """Every metric the method's outputs and the dataset's annotations allow, or the ``requested`` ones (checked)."""
    if requested:
        chosen = {}
        for name in requested:
            spec = registry.metric(name)
            if not spec.applies(method.outputs, dataset.annotations):
                raise ConfigError(
                    f"metric '{name}' needs outputs {sorted(spec.requires_outputs)} and annotations "
                    f"{sorted(spec.requires_annotations)}; method '{method.name}' gives {sorted(method.outputs)}, "
                    f"dataset '{dataset.name}' has {sorted(dataset.annotations)}"
                )
            chosen[name] = spec
        return chosen
    return {n: s for n, s in sorted(registry.metrics.items()) if s.applies(method.outputs, dataset.annotations)}


def check_pairing(method: MethodSpec, dataset: DatasetSpec) -> None:
    """Fail before training when the dataset lacks the annotations the method learns from."""
    missing = method.requires_annotations - dataset.annotations
    if missing:
        raise ConfigError(
            f"method '{method.name}' learns from {method.supervision}-level annotations "
            f"({', '.join(sorted(method.requires_annotations))}) but dataset '{dataset.name}' has only "
            f"{', '.join(sorted(dataset.annotations))}"
        )


def dataset_identity(dataset: Any, spec: DatasetSpec, split: str, options: Mapping[str, Any]) -> dict:
    """Name, split, size and a fingerprint: the dataset's own ``fingerprint`` (attribute or method) when it has one."""
    if hasattr(dataset, "fingerprint"):
        fingerprint = dataset.fingerprint
        fingerprint = str(fingerprint() if callable(fingerprint) else fingerprint)
    else:
        blob = json.dumps({"name": spec.name, "split": split, "options": options, "n": len(dataset)},
                          sort_keys=True, default=str)
        fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return {"name": spec.name, "split": split, "fingerprint": fingerprint, "num_images": len(dataset)}


def metric_objects(specs: Mapping[str, MetricSpec], config: ResolvedConfig, dataset: DatasetSpec,
                   eval_set: Any = None) -> dict[str, Any]:
    """Build each metric with its resolved options, plus the baselines reported beside it.

    A dataset with its own COCO file (``annotation_file``, ``category_ids``)
    gives ``coco_ap`` its ground truth unless the user set those options.
    """
    objects: dict[str, Any] = {}
    for name, spec in specs.items():
        options = dict(config.metrics.get(name, {}))
        options.update(_dataset_fill(spec, dataset))
        if name == "coco_ap" and getattr(eval_set, "annotation_file", None) and not options.get("annotation_file"):
            options["annotation_file"] = str(eval_set.annotation_file)
            options["category_ids"] = list(eval_set.category_ids)
        objects[name] = spec.build(**options)
        if name == "loc_map" and "point" in spec.options:
            objects["loc_map@centre"] = spec.build(**{**options, "point": "centre"})
    return objects


def _dataset_fill(spec: MetricSpec, dataset: DatasetSpec) -> dict:
    fill = {}
    if "num_classes" in spec.options:
        fill["num_classes"] = dataset.num_classes
    if "background" in spec.options and spec.name != "miou":
        fill["background"] = dataset.background
    return fill


def class_prior_baseline(labels, background: int | None) -> float:
    """cls_map of a constant score per class (the class prior): all scores tie, so each AP is the positive rate."""
    labels = labels.clone().float()
    if background is not None:
        labels[:, background] = 0
    positives = labels.sum(0)
    present = positives > 0
    if not present.any():
        return float("nan")
    return float((positives[present] / labels.shape[0]).mean())


def run_experiment(
    method: str,
    dataset: str,
    *,
    recipe: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    split: str | None = None,
    root: str | None = None,
    device: str = "auto",
    metrics: Sequence[str] | None = None,
    runs: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = lambda message: None,
) -> RunOutcome:
    """Train ``method`` on ``dataset`` with ``recipe`` (+ ``overrides``), evaluate, and write a run record."""
    from segbench.results.record import RunRecord, code_versions, collect_environment, make_config_id, make_run_id
    from segbench.results.store import RunStore

    registry = get_registry()
    method_spec = registry.method(method)
    dataset_spec = registry.dataset(dataset)
    split = split or dataset_spec.eval_split
    if split not in dataset_spec.splits:
        raise ConfigError(f"dataset '{dataset}' has no split '{split}'; splits: {', '.join(dataset_spec.splits)}")
    check_pairing(method_spec, dataset_spec)
    metric_specs = applicable_metrics(method_spec, dataset_spec, registry, metrics)
    config = resolve_config(method_spec, dataset_spec, metric_specs, recipe, overrides)
    store = RunStore(runs_dir(runs))

    import torch

    from segbench.api import create_dataset
    from segbench.engine.checkpoint import save_weights
    from segbench.data.checks import validate
    from segbench.engine.data import TrainView, make_loader, train_transform, training_keys
    from segbench.engine.device import amp_in_effect, device_name, resolve_device
    from segbench.engine.evaluate import evaluate
    from segbench.engine.seeding import seed_everything, set_deterministic
    from segbench.engine.train import train

    started = time.perf_counter()
    torch_device = resolve_device(device)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)
    eval_set = create_dataset(dataset, split, root=root, **config.data)
    validate(eval_set)  # a dataset with problems stops here, before training and before any record
    if hasattr(eval_set, "select_targets"):  # decode only what the metrics read
        needed = set().union(*(m.requires_annotations for m in metric_specs.values())) | {"labels", "labels_ignore"}
        eval_set.select_targets(needed)
    identity = dataset_identity(eval_set, dataset_spec, split, config.data)
    identity["skipped"] = getattr(eval_set, "skipped", 0)
    env = collect_environment(device=str(torch_device))
    env["device_name"] = device_name(torch_device)
    config_dict = config.to_dict()
    versions = code_versions(env, plugins=[method_spec.plugin] if method_spec.plugin in env["plugins"] else [])
    config_id = make_config_id(config_dict, identity["fingerprint"], versions, split=split)
    run_id = make_run_id(config_id, seed)

    finished = store.find(config_id=config_id, seed=seed, status="finished")
    if finished and not force:
        latest = finished[-1]
        return RunOutcome(latest.to_dict(), store.path_for(latest.run_id), reused=True)

    set_deterministic(config.train.deterministic)
    seed_everything(seed)
    train_set = create_dataset(dataset, dataset_spec.train_split, root=root, **config.data)
    validate(train_set)
    keys = training_keys(method_spec.requires_annotations)
    if hasattr(train_set, "select_targets"):
        train_set.select_targets(keys)
    model = method_spec.build(dataset_spec.num_classes, **config.model).to(torch_device)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)

    record = RunRecord(
        run_id=run_id, config_id=config_id, status="running", method=method, dataset=dataset, split=split,
        recipe=recipe, seed=seed, config=config_dict, dataset_identity=identity,
        class_names=list(dataset_spec.classes), effective_batch_size=config.train.batch_size, world_size=1,
        deterministic=config.train.deterministic, environment=env,
        extra={"amp": amp_in_effect(torch_device, config.train.amp),
               "train_skipped": getattr(train_set, "skipped", 0)},
    )
    record = store.write_new(record)  # claims {run_id}.json, or -2, -3... for a forced re-run
    record_path = store.path_for(record.run_id)
    weights_path = record_path.with_suffix(".safetensors")
    context = RunContext(record.run_id, config_id, method, dataset, split, recipe, seed, config_dict,
                         record_path, weights_path, device=str(torch_device))
    registry.pm.hook.run_started(run=context)
    try:
        for data in (train_set, eval_set):  # generate once, not once per loader worker
            if config.train.workers and hasattr(data, "materialize"):
                data.materialize()
        view = TrainView(train_set, keys, train_transform(config.train, keys))
        loader = make_loader(view, config.train.batch_size, shuffle=True, seed=seed,
                             workers=config.train.workers, drop_last=len(view) > config.train.batch_size)
        echo(f"run {record.run_id}: {method} ({recipe}) on {dataset}/{split}, {config.train.steps} steps, "
             f"device {torch_device}")
        trained = train(model, loader, config.train, torch_device, dataset_spec.mean, dataset_spec.std, progress)
        save_weights(model, weights_path)
        metric_objs = metric_objects(metric_specs, config, dataset_spec, eval_set)
        eval_loader = make_loader(eval_set, config.train.eval_batch_size, shuffle=False, seed=seed,
                                  workers=config.train.workers)
        result = evaluate(model, eval_loader, metric_objs, torch_device, dataset_spec.mean, dataset_spec.std,
                          amp=config.train.amp, eval_size=config.train.eval_size,
                          channels_last=config.train.channels_last, progress=progress)
        if "cls_map" in metric_objs and result.labels is not None:
            result.metrics["cls_map@prior"] = class_prior_baseline(result.labels, dataset_spec.background)
        record.status = "finished"
        record.metrics = result.metrics
        record.per_class = {k: _named(v, dataset_spec.classes) for k, v in result.per_class.items()}
        record.weights = weights_path.name
        record.timings = {
            "total_s": round(time.perf_counter() - started, 3),
            "train_s": round(trained.seconds, 3),
            "eval_s": round(result.seconds, 3),
            "train_images_per_s": round(trained.images / max(trained.seconds, 1e-9), 2),
            "eval_images_per_s": round(result.images / max(result.seconds, 1e-9), 2),
            "train_steps": trained.steps,
        }
        record.finished_at = _now()
    except (RunFailed, SegbenchError) as exc:
        _close(store, record, registry, context, "failed", str(exc))
        exc.args = (f"{exc} (record: {record_path})",)
        raise
    except KeyboardInterrupt:
        _close(store, record, registry, context, "interrupted", "interrupted by the user")
        raise
    except Exception as exc:
        _close(store, record, registry, context, "failed", f"{type(exc).__name__}: {exc}")
        raise
    store.write(record)
    registry.pm.hook.run_finished(run=context, record=record.to_dict())
    return RunOutcome(record.to_dict(), record_path)


def _close(store, record, registry, context, status: str, error: str) -> None:
    """Mark the run's record ``failed`` or ``interrupted`` with its reason, and tell the hooks."""
    record.status, record.error, record.finished_at = status, error, _now()
    store.write(record)
    registry.pm.hook.run_finished(run=context, record=record.to_dict())


def _named(values: Sequence[float], classes: Sequence[str]) -> dict[str, float | None]:
    named = {}
    for name, value in zip(classes, values):
        named[name] = None if value != value else round(float(value), 6)  # NaN -> null
    return named


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

