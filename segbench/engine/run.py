"""One run: resolve the config, train, evaluate, write the record. The CLI's ``run`` is a thin layer on this."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from segbench.engine.config import ResolvedConfig, default_recipe, identity_dict, resolve_config
from segbench.engine.tta import check_method as check_test_time
from segbench.engine.validation import check_validation
from segbench.errors import ConfigError, RunFailed, SegbenchError
from segbench.plugins import Registry, get_registry
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec, PostprocessorSpec, resolve_classes

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
    plan: dict | None = None  # --dry-run: the resolved plan (segbench.engine.plan); nothing was trained or written


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$SEGBENCH_RUNS_DIR``, else ``./runs``."""
    return Path(path or os.environ.get("SEGBENCH_RUNS_DIR") or DEFAULT_RUNS_DIR)


def applicable_metrics(method: MethodSpec, dataset: DatasetSpec, registry: Registry,
                       requested: Sequence[str] | None = None,
                       outputs: frozenset[str] | None = None) -> dict[str, MetricSpec]:
    """Every metric the method's outputs and the dataset's annotations allow, or the ``requested`` ones (checked).

    ``outputs`` (default: the method's) includes what the post-processors add.
    """
    outputs = method.outputs if outputs is None else outputs
    if requested:
        chosen = {}
        for name in requested:
            spec = registry.metric(name)
            if not spec.applies(outputs, dataset.annotations):
                raise ConfigError(
                    f"metric '{name}' needs outputs {sorted(spec.requires_outputs)} and annotations "
                    f"{sorted(spec.requires_annotations)}; method '{method.name}' gives {sorted(outputs)}, "
                    f"dataset '{dataset.name}' has {sorted(dataset.annotations)}"
                )
            chosen[name] = spec
        return chosen
    return {n: s for n, s in sorted(registry.metrics.items()) if s.applies(outputs, dataset.annotations)}


AUTO_POSTPROCESS = "cam_mask"


def postprocess_chain(method: MethodSpec, dataset: DatasetSpec, registry: Registry,
                      requested: Sequence[str] | None = None) -> tuple[dict[str, PostprocessorSpec], frozenset[str]]:
    """The post-processors a run applies, in order, and the prediction keys they leave.

    A method with score maps but no label map, evaluated on a dataset with
    masks, gets the class-map rule (``cam_mask``) first, so ``miou`` applies to
    it; the ``requested`` ones follow. A post-processor whose input the
    prediction lacks is a ``ConfigError``.
    """
    chain: dict[str, PostprocessorSpec] = {}
    outputs = set(method.outputs)
    wanted = list(requested or ())
    if "mask" not in outputs and "score_maps" in outputs and "mask" in dataset.annotations:
        wanted.insert(0, AUTO_POSTPROCESS)
    for name in wanted:
        spec = registry.postprocessor(name)
        if name in chain:
            continue
        if not spec.applies(frozenset(outputs)):
            raise ConfigError(
                f"postprocessor '{name}' needs one of the outputs {sorted(spec.requires_outputs)}; "
                f"method '{method.name}' gives {sorted(outputs)}"
            )
        chain[name] = spec
        outputs |= spec.gives_outputs
    return chain, frozenset(outputs)


def requested_postprocessors(method: MethodSpec, recipe: str, requested: Sequence[str] | None,
                             registry: Registry) -> list[str]:
    """The recipe's post-processors, then ``requested``; ``"none"`` among ``requested`` drops the recipe's.

    A recipe's post-processor whose plugin is not installed is a one-line
    ConfigError saying how to run without it.
    """
    names = list(requested or ())
    if "none" in names:
        return [n for n in names if n != "none"]
    spec = method.recipes.get(recipe)
    own = list(spec.postprocess) if spec is not None else []
    for name in own:
        if name not in registry.postprocessors:
            raise ConfigError(f"recipe '{method.name}:{recipe}' applies post-processor '{name}', which is not "
                              f"installed (segbench list postprocessors); install its plugin, or add "
                              f"--postprocess none to run without it")
    return list(dict.fromkeys([*own, *names]))


def postprocess_objects(chain: Mapping[str, PostprocessorSpec], config: ResolvedConfig, method: MethodSpec,
                        dataset: DatasetSpec) -> list[Any]:
    """Build each post-processor with its resolved options and what the engine fills in."""
    filled = {"num_classes": dataset.num_classes, "background": dataset.background,
              "supervision": method.supervision}
    objects = []
    for name, spec in chain.items():
        options = {**dict(config.postprocess.get(name, {})),
                   **{k: v for k, v in filled.items() if k in spec.options}}
        objects.append(spec.build(**options))
    return objects


def check_pairing(method: MethodSpec, dataset: DatasetSpec) -> None:
    """Fail before training when the dataset lacks the annotations the method learns from."""
    missing = method.requires_annotations - dataset.annotations
    if missing:
        raise ConfigError(
            f"method '{method.name}' learns from {method.supervision}-level annotations "
            f"({', '.join(sorted(method.requires_annotations))}) but dataset '{dataset.name}' has only "
            f"{', '.join(sorted(dataset.annotations))}"
        )


def training_split(config: ResolvedConfig, dataset: DatasetSpec) -> str:
    """The split a run trains on: ``train_split`` when set, else the dataset's own."""
    return config.train.train_split or dataset.train_split


def check_train_split(train_split: str, eval_split: str, dataset: DatasetSpec) -> str | None:
    """A ConfigError unless ``train_split`` is one of the dataset's splits; a warning when it is also evaluated on."""
    if train_split not in dataset.splits:
        raise ConfigError(f"dataset '{dataset.name}' has no split '{train_split}' to train on; "
                          f"splits: {', '.join(dataset.splits)}")
    if train_split == eval_split:
        return (f"warning: training and evaluating on the same split '{train_split}' of '{dataset.name}': "
                f"the numbers measure fitting, not generalisation")
    return None


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


def train_fingerprint_for_id(train_set: Any, identity: Mapping[str, Any]) -> str | None:
    """The training split's fingerprint as it enters ``config_id``; None for a generated dataset.

    A dataset that says ``fingerprint_from_options`` (shapes: its samples
    follow from the split, its options and its generator version, all already
    in the id), or that has no ``fingerprint`` of its own (the fallback hashes
    only name, split, options and length), adds nothing the id lacks, so its
    ids stay as they were before the training data entered them.
    """
    if getattr(train_set, "fingerprint_from_options", False) or not hasattr(train_set, "fingerprint"):
        return None
    return str(identity["fingerprint"])


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
    recipe: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    seed: int = 0,
    split: str | None = None,
    root: str | None = None,
    device: str = "auto",
    metrics: Sequence[str] | None = None,
    postprocess: Sequence[str] | None = None,
    runs: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] = lambda message: None,
    dry_run: bool = False,
    sources: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Train ``method`` on ``dataset`` with ``recipe`` (+ ``overrides``), evaluate, and write a run record.

    Without ``recipe`` the dataset's default applies (:func:`default_recipe`:
    ``paper`` on real data, ``quick`` on shapes); the run header says which.
    ``dry_run`` resolves and checks everything (datasets indexed, model
    built, weights of ``init`` matched) and returns the plan
    (:mod:`segbench.engine.plan`) in ``RunOutcome.plan`` without training or
    writing anything.

    ``postprocess`` names post-processors applied to every prediction after
    the automatic ones (see :func:`postprocess_chain`).

    ``sources`` names the config file each override came from, for errors (:func:`resolve_config`).

    An identical finished run is reused (``force`` trains again into a new
    record). An identical unfinished one (interrupted, failed, or left
    ``running`` by a killed process) is resumed into its own record from its
    last readable checkpoint. Under torchrun (``WORLD_SIZE`` > 1) every
    process calls this; rank 0 alone writes records and checkpoints, and every
    process returns the same outcome.
    """
    registry = get_registry()
    method_spec = registry.method(method)
    dataset_spec = registry.dataset(dataset)
    split = split or dataset_spec.eval_split
    if split not in dataset_spec.splits:
        raise ConfigError(f"dataset '{dataset}' has no split '{split}'; splits: {', '.join(dataset_spec.splits)}")
    check_pairing(method_spec, dataset_spec)
    recipe, why = (recipe, "") if recipe else default_recipe(method_spec, dataset_spec)
    postprocess = requested_postprocessors(method_spec, recipe, postprocess, registry)
    chain, outputs = postprocess_chain(method_spec, dataset_spec, registry, postprocess)
    metric_specs = applicable_metrics(method_spec, dataset_spec, registry, metrics, outputs)
    config = resolve_config(method_spec, dataset_spec, metric_specs, recipe, overrides, chain, sources)
    check_test_time(method_spec, config.train.tta, config.train.slide)  # instances cannot be averaged
    needs = method_spec.recipes[recipe].requires_init
    if needs and not config.train.init:
        raise ConfigError(f"recipe '{method}:{recipe}' starts from {needs}: pass --init RUN_ID (or a weights file)")
    same_split = check_train_split(training_split(config, dataset_spec), split, dataset_spec)
    validating = check_validation(config.train, dataset_spec, method, split, metric_specs)
    from segbench.results.store import RunStore

    store = RunStore(runs_dir(runs))

    from segbench.engine import distributed
    from segbench.engine.device import resolve_device

    started = time.perf_counter()
    dist, torch_device = distributed.setup(resolve_device(device))
    if same_split and dist.is_main:
        echo(same_split)
    if validating and dist.is_main:
        echo(validating)
    try:
        return _run(registry, method_spec, dataset_spec, chain, metric_specs, config, store, dist, torch_device,
                    started, recipe=recipe, why=why, dry_run=dry_run, seed=seed, split=split, root=root,
                    force=force, progress=progress, echo=echo if dist.is_main else (lambda message: None))
    finally:
        distributed.teardown(dist)


@dataclass
class _Claim:
    """Rank 0's decision about the record a run writes: resume an unfinished one, or start one."""

    record: Any = None  # RunRecord
    checkpoint: Path | None = None
    loaded: tuple[dict, dict] | None = None  # (weights, training state) of ``checkpoint``, rank 0 only
    lock: Any = None  # RunLock, rank 0 only


def _claim(store, record, force: bool, say: Callable[[str], None]) -> _Claim:
    """The unfinished record of the same config and seed to resume (unless ``force``), else a new one; its lock."""
    import dataclasses

    from segbench.engine.checkpoint import RunLock, latest_checkpoint, state_dir
    from segbench.results.record import utc_now

    if not force:
        unfinished = [r for r in store.find(config_id=record.config_id, seed=record.seed) if r.status != "finished"]
        if unfinished:
            previous = unfinished[-1]
            directory = state_dir(store.path_for(previous.run_id))
            lock = RunLock.acquire(directory)
            if lock is None:
                raise ConfigError(f"run {previous.run_id} is in progress in another process (it holds "
                                  f"{directory / 'lock'}); wait for it to end, or add --force to start another run")
            found = latest_checkpoint(directory, warn=say)
            step = int(found[2]["step"]) if found else 0
            entry = {"step": step, "checkpoint": found[0].name if found else None,
                     "previous_status": previous.status, "at": utc_now()}
            resumed = dataclasses.replace(record, run_id=previous.run_id, created_at=previous.created_at,
                                          resumes=[*previous.resumes, entry])
            store.write(resumed)
            where = f"step {step} ({found[0]})" if found else "step 0 (no checkpoint)"
            say(f"resuming run {previous.run_id} ({previous.status}) from {where}")
            return _Claim(resumed, checkpoint=found[0] if found else None,
                          loaded=(found[1], found[2]) if found else None, lock=lock)
    fresh = store.write_new(record)  # claims {run_id}.json, or -2, -3... for a forced re-run
    return _Claim(fresh, lock=RunLock.acquire(state_dir(store.path_for(fresh.run_id))))


def _threads(requested: int, dist, device) -> int:
    """Torch CPU threads per process: ``requested`` (0 = torch's default), at most cores / processes under DDP."""
    if not dist.enabled or device.type != "cpu":
        return requested
    local = int(os.environ.get("LOCAL_WORLD_SIZE", dist.world_size))
    cap = max(1, (os.cpu_count() or 1) // max(local, 1))
    return min(requested or cap, cap)


def _run(registry, method_spec, dataset_spec, chain, metric_specs, config, store, dist, torch_device, started, *,
         recipe, why, dry_run, seed, split, root, force, progress, echo) -> RunOutcome:
    import torch

    from segbench.api import create_dataset
    from segbench.data.checks import validate
    from segbench.engine import distributed
    from segbench.engine.checkpoint import load_checkpoint, save_checkpoint, save_weights, state_dir
    from segbench.engine.data import (SeededSamples, TrainSampler, TrainView, eval_keys, make_eval_loader,
                                      make_loader, train_transform, training_keys)
    from segbench.engine.device import amp_in_effect, device_name
    from segbench.engine.evaluate import evaluate
    from segbench.engine.init import apply_init, resolve_init
    from segbench.engine.plan import model_cost
    from segbench.engine.resources import cuda_peak_mb, peak_rss_mb, reset_cuda_peak
    from segbench.engine.seeding import mix, seed_everything, set_deterministic
    from segbench.engine.signals import stop_on_signals
    from segbench.engine.steplog import LoggerHooks, StepLog, log_path
    from segbench.engine.train import train
    from segbench.engine.validation import build_validation, share_buffers, use_chosen
    from segbench.metrics.confusion import confusion_matrices
    from segbench.results.record import RunRecord, code_versions, collect_environment, make_config_id, make_run_id

    method, dataset = method_spec.name, dataset_spec.name
    threads = _threads(config.train.threads, dist, torch_device)
    if threads:
        torch.set_num_threads(threads)
    reset_cuda_peak(torch_device)
    eval_set = create_dataset(dataset, split, root=root, **config.data)
    validate(eval_set)  # a dataset with problems stops here, before training and before any record
    if hasattr(eval_set, "select_targets"):  # decode only what the metrics read
        eval_set.select_targets(eval_keys(metric_specs))
    identity = dataset_identity(eval_set, dataset_spec, split, config.data)
    identity["skipped"] = getattr(eval_set, "skipped", 0)
    if getattr(eval_set, "root", None) is not None:  # where the files were read (not in the id): eval/show reuse it
        identity["root"] = str(Path(eval_set.root).resolve())
    train_split = training_split(config, dataset_spec)  # built before the id: its files are part of it
    train_set = create_dataset(dataset, train_split, root=root, **config.data)
    validate(train_set)
    dataset_spec = resolve_classes(dataset_spec, eval_set, train_set)  # classes read from the files, if so
    for which, data, name in (("training", train_set, train_split), ("evaluation", eval_set, split)):
        if len(data) == 0:  # refused before any record, checkpoint or lock
            raise ConfigError(f"dataset '{dataset}': the {which} split '{name}' is empty"
                              + (" (num_train=0?)" if which == "training" and dataset == "shapes" else ""))
    train_identity = dataset_identity(train_set, dataset_spec, train_split, config.data)
    identity["train"] = {k: train_identity[k] for k in ("split", "fingerprint", "num_images")}
    identity["train"]["skipped"] = getattr(train_set, "skipped", 0)
    env = collect_environment(device=str(torch_device))
    env["device_name"] = device_name(torch_device)
    config_dict = config.to_dict()
    versions = code_versions(env, plugins=[method_spec.plugin] if method_spec.plugin in env["plugins"] else [])
    init = resolve_init(config.train.init, store) if config.train.init else None  # an unknown run id stops here
    hashed = identity_dict(config_dict, init.identity if init else None, method_spec.late_options,
                           method_spec.renamed_options, dataset_spec.path_options)
    config_id = make_config_id(hashed, identity["fingerprint"], versions, split=split, world_size=dist.world_size,
                               train_fingerprint=train_fingerprint_for_id(train_set, train_identity))
    run_id = make_run_id(config_id, seed)
    metric_objs = metric_objects(metric_specs, config, dataset_spec, eval_set)
    distributed.check_distributable(metric_objs, dist.world_size)

    reused = None
    if dist.is_main and not force:
        finished = store.find(config_id=config_id, seed=seed, status="finished")
        reused = finished[-1].to_dict() if finished else None
    reused = distributed.broadcast(reused, dist)
    if reused and not dry_run:
        return RunOutcome(reused, store.path_for(reused["run_id"]), reused=True)

    set_deterministic(config.train.deterministic)
    seed_everything(seed)
    keys = training_keys(method_spec.requires_annotations)
    if hasattr(train_set, "select_targets"):
        train_set.select_targets(keys)
    model = method_spec.build(dataset_spec.num_classes, **config.model).to(torch_device)
    if init is not None:  # a shape mismatch stops here, before any record
        apply_init(model, init)
    if config.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    post = postprocess_objects(chain, config, method_spec, dataset_spec)  # bad options fail before any record
    if dry_run:  # everything resolved and checked; nothing trained, nothing written
        from segbench.engine.plan import make_plan

        plan = make_plan(method_spec=method_spec, dataset_spec=dataset_spec, config=config, recipe=recipe, why=why,
                         train_set=train_set, eval_set=eval_set, split=split, train_split=train_split, model=model,
                         world_size=dist.world_size, metrics=metric_objs, postprocess=chain, config_id=config_id,
                         run_id=run_id, finished=str(store.path_for(reused["run_id"])) if reused else None)
        return RunOutcome(plan, store.path_for(run_id), plan=plan)

    effective_batch = config.train.batch_size * config.train.accumulate * dist.world_size
    template = RunRecord(
        run_id=run_id, config_id=config_id, status="running", method=method, dataset=dataset, split=split,
        recipe=recipe, seed=seed, config=config_dict, dataset_identity=identity,
        class_names=list(dataset_spec.classes),
        effective_batch_size=effective_batch, world_size=dist.world_size, deterministic=config.train.deterministic,
        environment=env, cost=model_cost(method_spec, dataset_spec, config, model, train_set, effective_batch),
        extra={"amp": amp_in_effect(torch_device, config.train.amp),
               "train_skipped": getattr(train_set, "skipped", 0),
               "train_split": train_split,
               **({"class_colors": [list(map(int, c)) for c in eval_set.colors]}
                  if getattr(eval_set, "colors", None) else {}),  # the dataset's own colours: predict's palette
               "deviations": list(method_spec.recipes[recipe].deviations),
               **({"init": {"source": init.given, "weights": str(init.path), "identity": init.identity,
                            "loaded": len(init.loaded), "kept": init.kept, "unused": len(init.unused)}}
                  if init is not None else {})},
    )
    claim, decision = _Claim(), None
    if dist.is_main:
        try:
            claim = _claim(store, template, force, echo)
            decision = {"record": claim.record.to_dict(),
                        "checkpoint": str(claim.checkpoint) if claim.checkpoint else None}
        except Exception as exc:  # every process must learn of it, or the others wait forever
            decision = exc
    decision = distributed.broadcast(decision, dist)
    if isinstance(decision, BaseException):
        if dist.is_main:
            raise decision
        raise type(decision)(*decision.args) from None
    record = claim.record if dist.is_main else RunRecord.from_dict(decision["record"])
    record_path = store.path_for(record.run_id)
    weights_path = record_path.with_suffix(".safetensors")
    checkpoints = state_dir(record_path)
    context = RunContext(record.run_id, config_id, method, dataset, split, recipe, seed, config_dict,
                         record_path, weights_path, device=str(torch_device), extra={"resumed_from": None})
    hooks = LoggerHooks(registry.pm)  # a logger that raises is switched off, the run goes on
    if decision["checkpoint"]:
        context.extra["resumed_from"] = int(record.resumes[-1]["step"])
    if dist.is_main:
        hooks("run_started", run=context)

    def save(step: int, state: dict) -> None:
        rngs = distributed.gather(state["rng"], dist)  # every process's RNG states, in rank order
        if dist.is_main:
            save_checkpoint(checkpoints, step, model, {**state, "rng": rngs})

    try:
        with stop_on_signals() as stop, _nondeterministic_ops() as nondeterministic:
            resume = None
            if decision["checkpoint"]:
                weights, resume = claim.loaded if dist.is_main else load_checkpoint(decision["checkpoint"])
                if resume.get("world_size", 1) != dist.world_size:
                    raise ConfigError(f"checkpoint {decision['checkpoint']} was written by "
                                      f"{resume.get('world_size')} processes, this run has {dist.world_size}")
                model.load_state_dict(weights)
                context.extra["resumed_from"] = int(resume["step"])
            if dist.rank:  # each process its own stream for the model's random ops (dropout)
                torch.manual_seed(mix(seed, dist.rank))
            for data in (train_set, eval_set):  # generate once, not once per loader worker
                if config.train.workers and hasattr(data, "materialize"):
                    data.materialize()
            view = SeededSamples(TrainView(train_set, keys, train_transform(config.train, keys)))
            sampler = TrainSampler(len(view), seed, dist.rank, dist.world_size)
            step_batch = config.train.batch_size * config.train.accumulate  # one optimizer step's images
            loader = make_loader(view, step_batch, shuffle=False, seed=seed,
                                 workers=config.train.workers, drop_last=sampler.per_rank > step_batch,
                                 sampler=sampler)
            procs = f", {dist.world_size} processes ({dist.backend})" if dist.enabled else ""
            chosen = f"recipe '{recipe}', {why}" if why else recipe
            echo(f"run {record.run_id}: {method} ({chosen}) on {dataset}/{split}, {config.train.steps} steps, "
                 f"device {torch_device}{procs}")
            if init is not None and not decision["checkpoint"]:
                echo(init.summary())
            validation = build_validation(config=config, dataset_spec=dataset_spec, metric_specs=metric_specs,
                                          eval_set=eval_set, split=split, root=root, seed=seed, device=torch_device,
                                          postprocessors=post, dist=dist, directory=checkpoints)
            steplog = StepLog(log_path(record_path), lambda step, scalars: hooks(
                "run_step", run=context, step=step, scalars=scalars)) if dist.is_main else None
            if steplog is not None:
                steplog.start(int(resume["step"]) if resume else 0)  # no step twice in the CSV
            trained = train(model, loader, config.train, torch_device, dataset_spec.mean, dataset_spec.std,
                            progress, resume=resume, save=save, stop=stop, dist=dist, validation=validation,
                            steplog=steplog)
            evaluated = trained.ema.module if trained.ema is not None else model  # ema: the average is scored
            last_weights = use_chosen(validation, evaluated, record_path.with_suffix(".last.safetensors"),
                                      dist)  # select: the best
            if dist.is_main:
                save_weights(evaluated, weights_path)
            eval_loader = make_eval_loader(eval_set, config.train.eval_batch_size, seed, config.train.workers, dist)
            share_buffers(evaluated, dist)  # DDP: every process scores rank 0's statistics, the saved ones
            result = evaluate(evaluated, eval_loader, metric_objs, torch_device, dataset_spec.mean, dataset_spec.std,
                              amp=config.train.amp, eval_size=config.train.eval_size,
                              channels_last=config.train.channels_last, progress=progress, postprocessors=post,
                              dist=dist, tta=config.train.tta, slide=config.train.slide)
        costs = distributed.gather({"images": trained.images, "rss": peak_rss_mb(),
                                    "cuda": cuda_peak_mb(torch_device)}, dist)
        if dist.is_main:
            if "cls_map" in metric_objs and result.labels is not None:
                result.metrics["cls_map@prior"] = class_prior_baseline(result.labels, dataset_spec.background)
            record.status = "finished"
            record.metrics = result.metrics
            record.per_class = {k: _named(v, dataset_spec.classes) for k, v in result.per_class.items()}
            record.confusion = confusion_matrices(metric_objs)  # rank 0's metrics hold the sum over ranks
            record.weights = weights_path.name
            record.timings = _timings(started, trained, result, sum(c["images"] for c in costs))
            record.resources = _resources(costs, threads or torch.get_num_threads(), dist.world_size)
            record.extra["sync_bn"] = trained.sync_bn
            record.curves = {"loss": trained.loss_curve, **(validation.curves if validation is not None else {})}
            if validation is not None:
                record.timings["val_s"] = round(validation.seconds, 3)
                record.extra["validation"] = {**validation.summary(config.train.steps), "last_weights": last_weights}
            if config.train.deterministic:
                record.extra["nondeterministic_ops"] = sorted(nondeterministic)
            record.finished_at = _now()
    except (RunFailed, SegbenchError) as exc:
        note = _close(store, record, hooks, context, "failed", str(exc), claim, dist)
        exc.args = (f"{exc} (record: {record_path}{note})",)
        raise
    except KeyboardInterrupt as exc:
        message = str(exc) or "interrupted by the user"
        _close(store, record, hooks, context, "interrupted", message, claim, dist)
        raise
    except Exception as exc:
        _close(store, record, hooks, context, "failed", f"{type(exc).__name__}: {exc}", claim, dist)
        raise
    if dist.is_main:
        store.write(record)
        claim.lock.release(remove_directory=True)  # finished: the checkpoints have served
        hooks("run_finished", run=context, record=record.to_dict())
    final = distributed.broadcast(record.to_dict() if dist.is_main else None, dist)
    return RunOutcome(final, record_path)


def _timings(started: float, trained, result, images: int) -> dict[str, float]:
    """Wall time of this attempt; training time, steps and throughput over every attempt; evaluation."""
    return {
        "total_s": round(time.perf_counter() - started, 3),
        "train_s": round(trained.seconds, 3),
        "eval_s": round(result.seconds, 3),
        "checkpoint_s": round(trained.checkpoint_seconds, 3),
        "train_images_per_s": round(images / max(trained.seconds, 1e-9), 2),
        "eval_images_per_s": round(result.images / max(result.seconds, 1e-9), 2),
        "train_steps": trained.steps,
    }


def _resources(costs: list[dict], threads: int, processes: int) -> dict[str, Any]:
    """Peak memory over the processes (the largest one's), threads per process."""
    rss = [c["rss"] for c in costs if c["rss"] is not None]
    cuda = [c["cuda"] for c in costs if c["cuda"] is not None]
    return {"peak_rss_mb": max(rss) if rss else None, "cuda_max_allocated_mb": max(cuda) if cuda else None,
            "threads": threads, "processes": processes}


class _nondeterministic_ops:
    """Context manager collecting the ops torch warned have no deterministic implementation (``warn_only``).

    Each such op is named once on stderr, in one line; other warnings pass through.
    """

    MARK = "does not have a deterministic implementation"

    def __enter__(self) -> set[str]:
        import warnings

        self.found: set[str] = set()
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        show = warnings.showwarning

        def showwarning(message, category, filename, lineno, file=None, line=None):
            text = str(message)
            if self.MARK not in text:
                show(message, category, filename, lineno, file, line)
                return
            op = text.split(self.MARK)[0].strip()
            if op not in self.found:  # one line per op instead of torch's paragraph at each call site
                self.found.add(op)
                print(f"note: torch has no deterministic implementation of {op} (recorded in the run's "
                      "nondeterministic_ops)", file=sys.stderr)

        warnings.showwarning = showwarning
        return self.found

    def __exit__(self, *exc) -> None:
        self._catcher.__exit__(*exc)


def _close(store, record, hooks, context, status: str, error: str, claim=None, dist=None) -> str:
    """Mark the run's record ``failed`` or ``interrupted`` with its reason, and tell the hooks (rank 0 only).

    The checkpoints stay: running the same command again resumes from the last one. Returns a note for the
    error message when the record itself could not be written (a full disk), else "".
    """
    if dist is not None and not dist.is_main:
        return ""
    record.status, record.error, record.finished_at = status, error, _now()
    note = ""
    try:
        store.write(record)
    except (SegbenchError, OSError) as exc:  # a full disk: the first error is the one to show
        note = f"; the record could not be marked {status} either ({exc})"
    if claim is not None and claim.lock is not None:
        claim.lock.release()
    hooks("run_finished", run=context, record=record.to_dict())
    return note


def _named(values: Sequence[float], classes: Sequence[str]) -> dict[str, float | None]:
    named = {}
    for name, value in zip(classes, values):
        named[name] = None if value != value else round(float(value), 6)  # NaN -> null
    return named


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

