"""Training settings, recipes and ``--set key=value`` overrides resolved into one config.

The resolved config has five sections: ``train`` (:class:`TrainConfig`),
``model`` (the method's options), ``data`` (the dataset's options),
``metrics`` (per-metric options) and ``postprocess`` (the post-processors
applied to predictions, in order, with their options). ``--set key=value``
finds the one section that has ``key``; ``--set section.key=value``
(``model.``, ``data.``, ``train.``, ``metrics.NAME.``, ``postprocess.NAME.``)
says it outright when a key is ambiguous.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from segbench.errors import ConfigError, UnknownNameError
from segbench.plugins import unknown_name_message
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec, PostprocessorSpec


@dataclass
class TrainConfig:
    """How a method is trained and evaluated; recipes override these defaults."""

    steps: int = 1000
    batch_size: int = 16  # per process: the effective batch is batch_size x processes (recorded)
    eval_batch_size: int = 32
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    head_lr_mult: float = 1.0  # learning rate of non-backbone parameters, relative to lr
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "poly"  # poly | cosine | step | constant
    poly_power: float = 0.9
    milestones: tuple[int, ...] = ()  # step schedule: lr x gamma at each of these steps (Caffe's multistep)
    gamma: float = 0.1  # step schedule: the factor at each milestone
    warmup_steps: int = 0
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    hflip: bool = True  # random horizontal flip in training
    crop_size: int = 0  # random crop (padded with void) to this size; 0 = keep the image size
    scale_min: float = 1.0  # random scale range before the crop
    scale_max: float = 1.0
    eval_size: int = 0  # resize evaluation images to this square size; 0 = original size
    amp: str = "off"  # bf16 | fp16 | off (CUDA only; recorded)
    channels_last: bool = False
    workers: int = 0
    deterministic: bool = True
    threads: int = 0  # torch CPU threads per process; 0 = torch's default
    log_every: int = 50
    checkpoint_every: int = 500  # steps between resume checkpoints (also at epoch ends and the last step); 0 = off
    sync_bn: bool = False  # SyncBatchNorm across processes (data parallel on CUDA)
    train_split: str = ""  # the split trained on; "" = the dataset's own (e.g. voc2012: train; trainaug with SBD)
    warp_size: int = 0  # resize every training image to this square first, aspect not kept (WILDCAT); 0 = off
    init: str = ""  # start from these weights: a finished run's id or a weights file (--init); "" = as built
    elastic_alpha: float = 0.0  # elastic deformation (torchvision ElasticTransform) magnitude in pixels; 0 = off
    elastic_sigma: float = 5.0  # its smoothness: the Gaussian sigma of the displacement field, pixels
    tta: str = ""  # test-time augmentation: "" | "flip" | "ms:0.5,0.75,1.0" | "ms:...+flip" (segbench.engine.tta)
    slide: str = ""  # sliding-window evaluation "SIZE,STRIDE" (mmsegmentation's slide mode); "" = whole images
    accumulate: int = 1  # gradient accumulation: K passes of batch_size per optimizer step (effective batch x K)
    ema: float = 0.0  # exponential moving average of the weights with this decay (e.g. 0.999), evaluated; 0 = off
    eval_every: int = 0  # validate every N steps (and at the last) on val_split; 0 = off (segbench.engine.validation)
    val_split: str = ""  # the split validated on; "" = the dataset's eval_split (a warning when it is the reported one)
    select: str = ""  # keep the best validation checkpoint by this metric (e.g. miou) and evaluate it; "" = the last

    def validate(self) -> None:
        choices = {"optimizer": ("sgd", "adamw"), "schedule": ("poly", "cosine", "step", "constant"),
                   "amp": ("bf16", "fp16", "off")}
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key} must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        for key in ("steps", "batch_size", "eval_batch_size"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1, got {getattr(self, key)}")
        if not math.isfinite(self.lr) or self.lr <= 0:
            raise ConfigError(f"lr must be a positive finite number, got {self.lr}")
        for key in ("workers", "threads", "warmup_steps", "crop_size", "eval_size", "log_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key} must be 0 or more, got {getattr(self, key)}")
        for key in ("weight_decay", "momentum", "grad_clip", "head_lr_mult"):
            if not 0 <= getattr(self, key) < math.inf:
                raise ConfigError(f"{key} must be a finite number >= 0, got {getattr(self, key)}")
        if not 0 < self.scale_min <= self.scale_max < math.inf:
            raise ConfigError(f"scale_min and scale_max must satisfy 0 < scale_min <= scale_max, got "
                              f"{self.scale_min} and {self.scale_max}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every must be 0 (off) or a number of steps, got {self.checkpoint_every}")
        one = isinstance(self.milestones, (str, int, float, bool)) or not hasattr(self.milestones, "__iter__")
        self.milestones = (self.milestones,) if one else tuple(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in self.milestones) or \
                list(self.milestones) != sorted(set(self.milestones)):
            raise ConfigError(f"milestones must be increasing positive step numbers, got {list(self.milestones)}")
        if self.schedule == "step" and not self.milestones:
            raise ConfigError("schedule 'step' needs milestones, e.g. --set milestones=[2000,4000]")
        if not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if not isinstance(self.train_split, str):
            raise ConfigError(f"train_split must be a split name, got {self.train_split!r}")
        if not isinstance(self.init, str):
            raise ConfigError(f"init must be a run id or a weights file, got {self.init!r}")
        if not self.elastic_alpha >= 0 or not self.elastic_sigma > 0:
            raise ConfigError(f"elastic_alpha must be >= 0 and elastic_sigma > 0, got {self.elastic_alpha!r} and "
                              f"{self.elastic_sigma!r}")
        if isinstance(self.accumulate, bool) or not isinstance(self.accumulate, int) or self.accumulate < 1:
            raise ConfigError(f"accumulate must be a whole number of passes >= 1 (1 = off), got {self.accumulate!r}")
        if isinstance(self.ema, bool) or not isinstance(self.ema, (int, float)) or not 0 <= self.ema < 1:
            raise ConfigError(f"ema must be a decay in [0, 1) (0 = off, e.g. 0.999), got {self.ema!r}")
        if isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int) or self.eval_every < 0:
            raise ConfigError(f"eval_every must be 0 (off) or a number of steps, got {self.eval_every!r}")
        if not isinstance(self.val_split, str) or not isinstance(self.select, str):
            raise ConfigError(f"val_split and select must be names, got {self.val_split!r} and {self.select!r}")
        if (self.val_split or self.select) and not self.eval_every:
            raise ConfigError("val_split and select choose what validation does: set eval_every=N (steps) too")
        if isinstance(self.warp_size, bool) or not isinstance(self.warp_size, int) or self.warp_size < 0:
            raise ConfigError(f"warp_size must be 0 (off) or a size in pixels, got {self.warp_size!r}")
        from segbench.engine.tta import parse_slide, parse_tta

        parse_tta(self.tta)
        self.tta = (self.tta or "").strip()
        window = parse_slide(self.slide)  # --set slide=512,341 arrives as a tuple
        self.slide = f"{window[0]},{window[1]}" if window else ""


TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig))
ENGINE_FILLED = ("num_classes", "background", "supervision")  # options the engine fills from the dataset/method


LATE_TRAIN_FIELDS: dict[str, Any] = {"warp_size": 0, "init": "", "elastic_alpha": 0.0, "elastic_sigma": 5.0,
                                     "tta": "", "slide": "", "accumulate": 1, "ema": 0.0,
                                     "eval_every": 0, "val_split": "", "select": ""}
"""Train fields added after records existed, each with its neutral value (the one that trains as before the field
existed). At that value the field stays out of ``config_id`` (:func:`identity_dict`), so adding a field does not
split records that ran before it from identical runs after it; like ``world_size``, which enters the hash only
when it is not 1. (``milestones``, ``gamma`` and ``train_split`` came before this rule and are in every id.)"""


def identity_dict(config: Mapping[str, Any], init_identity: str | None = None,
                  late_options: Mapping[str, Any] | None = None,
                  renamed_options: Mapping[str, str] | None = None,
                  path_options: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` (:meth:`ResolvedConfig.to_dict`) as it enters ``config_id``: late train fields and the method's
    ``late_options`` (:attr:`MethodSpec.late_options`) at their neutral value left out, ``renamed_options`` under
    their old names; ``init`` replaced by what its weights are (``init_identity``: the source run's id or the
    file's sha256), so a run id and the path of its weights give one id, and a changed file a new one. The
    dataset's ``path_options`` (:attr:`DatasetSpec.path_options`: files and folders, whose contents the dataset
    fingerprints identify) are left out when set, so the same files at another path give the same id."""
    out = dict(config)
    if out.get("metrics"):
        out["metrics"] = metrics_identity(out["metrics"], out.get("dataset"), out.get("data") or {})
    if path_options and "data" in out:
        out["data"] = {k: v for k, v in out["data"].items() if not (k in path_options and v is not None)}
    if "train" in out:
        out["train"] = {k: v for k, v in out["train"].items()
                        if not (k in LATE_TRAIN_FIELDS and v == LATE_TRAIN_FIELDS[k])}
        if init_identity is not None and "init" in out["train"]:
            out["train"]["init"] = init_identity
    if late_options and "model" in out:
        out["model"] = {k: v for k, v in out["model"].items() if not (k in late_options and v == late_options[k])}
    if renamed_options and "model" in out:
        out["model"] = {renamed_options.get(k, k): v for k, v in out["model"].items()}
    return out


def metrics_identity(metrics: Mapping[str, Mapping[str, Any]], dataset: str | None = None,
                     data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The metric options as they enter ``config_id``: a ``late`` metric (:attr:`MetricSpec.late`) at its default
    options (the metric's, then ``dataset``'s metric defaults for its ``data`` options) and each metric's
    ``late_options`` at their neutral value are left out, so older ids stay."""
    from segbench.plugins import get_registry

    registry = get_registry()
    dataset_spec = registry.datasets.get(dataset) if dataset else None
    dataset_defaults = dataset_spec.metric_defaults_for({**dataset_spec.options, **(data or {})}) \
        if dataset_spec is not None else {}
    out: dict[str, Any] = {}
    for name, options in metrics.items():
        spec = registry.metrics.get(name)
        if spec is None:
            out[name] = options
            continue
        defaults = {**spec.options, **dataset_defaults.get(name, {})}
        if spec.late and all(options.get(k) == v for k, v in defaults.items() if k not in ENGINE_FILLED):
            continue
        out[name] = {k: v for k, v in options.items()
                     if not (k in spec.late_options and v == spec.late_options[k])}
    return out


@dataclass
class ResolvedConfig:
    """Everything that decides a run's numbers, after recipe and overrides."""

    method: str
    dataset: str
    recipe: str
    train: TrainConfig
    model: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    postprocess: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "dataset": self.dataset,
            "recipe": self.recipe,
            "train": dataclasses.asdict(self.train),
            "model": dict(self.model),
            "data": dict(self.data),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "postprocess": {k: dict(v) for k, v in self.postprocess.items()},
        }


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=0.1", "backbone=resnet18"]`` -> ``{"lr": 0.1, "backbone": "resnet18"}``."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        parsed[key.strip()] = parse_value(value.strip())
    return parsed


def parse_value(text: str) -> Any:
    """A ``--set`` value: Python literal when it parses (``3``, ``0.1``, ``[1,2]``), true/false/none, else the string."""
    lowered = text.lower()
    if lowered in ("true", "yes"):
        return True
    if lowered in ("false", "no"):
        return False
    if lowered in ("none", "null"):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def default_recipe(method: MethodSpec, dataset: DatasetSpec) -> tuple[str, str]:
    """The recipe a run gets without ``--recipe``, and why: the dataset's ``default_recipe`` (``paper`` for data
    read from files, ``quick`` for ``shapes``), else ``quick`` when the method lacks it."""
    wanted = dataset.default_recipe
    if wanted in method.recipes:
        kind = "generated" if not dataset.needs_root else "read from files"
        return wanted, f"the default for {kind} dataset '{dataset.name}'; --recipe NAME to choose"
    return "quick", f"method '{method.name}' has no '{wanted}' recipe, the default of '{dataset.name}'"


def resolve_config(
    method: MethodSpec,
    dataset: DatasetSpec,
    metrics: Mapping[str, MetricSpec],
    recipe: str = "quick",
    overrides: Mapping[str, Any] | None = None,
    postprocessors: Mapping[str, PostprocessorSpec] | None = None,
    sources: Mapping[str, str] | None = None,
) -> ResolvedConfig:
    """Defaults, then the recipe, then the dataset's metric defaults, then ``overrides``.

    A recipe that sets no ``crop_size`` gets the dataset's (``DatasetSpec.crop_size``).

    ``postprocessors`` (in the order they apply) get their default options,
    which ``--set postprocess.NAME.key=value`` or a flat key overrides.

    ``sources`` names the config file each override came from (``segbench run --config``), by key: an error about
    one of those starts with the file.
    """
    if recipe not in method.recipes:
        raise UnknownNameError(unknown_name_message(f"recipe of method '{method.name}'", recipe, method.recipes))
    chosen = method.recipes[recipe]
    train = {**dataclasses.asdict(TrainConfig()), **chosen.train}
    if "crop_size" not in chosen.train:  # a recipe that sets no crop size trains at the dataset's own
        train["crop_size"] = dataset.crop_size
    bad_train = set(chosen.train) - set(TRAIN_KEYS)
    if bad_train:
        raise ConfigError(f"recipe '{method.name}:{recipe}' sets unknown train keys {sorted(bad_train)}")
    model = {**method.options, **chosen.model}
    data = {**dataset.options, **{k: v for k, v in chosen.data.items() if k in dataset.options}}
    metric_options = {name: dict(spec.options) for name, spec in metrics.items()}
    post_options = {name: {k: v for k, v in spec.options.items() if k not in ENGINE_FILLED}
                    for name, spec in (postprocessors or {}).items()}
    for name, values in chosen.postprocess_options.items():
        if name in post_options:  # the recipe's own options for its post-processors (dropped with them)
            bad = set(values) - set(post_options[name])
            if bad:
                raise ConfigError(f"recipe '{method.name}:{recipe}' sets unknown {name} options {sorted(bad)}")
            post_options[name].update(values)
    sections: dict[str, dict[str, Any]] = {"train": train, "model": model, "data": data}
    explicit: set[tuple[str, str]] = set()
    for key, value in (overrides or {}).items():
        try:
            explicit |= _apply(key, value, sections, metric_options, post_options)
        except ConfigError as exc:
            raise _sourced(exc, sources, key) from None
    user_split = any(k in ("train_split", "train.train_split") for k in (overrides or {}))
    if not user_split and train["train_split"] and train["train_split"] not in dataset.splits:
        train["train_split"] = ""  # the recipe's split (trainaug) where the dataset has it, else the dataset's own
    for name, defaults in dataset.metric_defaults_for(data).items():  # from the final dataset options
        for key, value in defaults.items():
            if name in metric_options and (name, key) not in explicit:
                metric_options[name][key] = value
    config = ResolvedConfig(
        method=method.name, dataset=dataset.name, recipe=recipe,
        train=TrainConfig(**train), model=model, data=data, metrics=metric_options, postprocess=post_options,
    )
    try:
        config.train.validate()
    except ConfigError as exc:  # the messages start with the field: "lr must be ..."
        raise _sourced(exc, sources, "train." + str(exc).split(" ", 1)[0]) from None
    return config


def _sourced(error: ConfigError, sources: Mapping[str, str] | None, key: str) -> ConfigError:
    """``error`` starting with the file that set ``key`` (its ``--set`` wording dropped) when a file did."""
    if not sources or key not in sources:
        return error
    return ConfigError(f"{sources[key]}: {str(error).replace('--set ', '', 1)}")


def _apply(key: str, value: Any, sections: dict[str, dict], metric_options: dict[str, dict],
           post_options: dict[str, dict]) -> set:
    """Set one override; returns the (metric, option) pairs it set."""
    head, _, rest = key.partition(".")
    unknown = ConfigError(_unknown_key(key, sections, {**metric_options, **post_options}))
    if rest and head in sections:
        if rest not in sections[head]:
            raise unknown
        sections[head][rest] = _coerce(sections[head][rest], value, key)
        return set()
    if rest and head in ("metrics", "postprocess"):
        table = metric_options if head == "metrics" else post_options
        name, _, option = rest.partition(".")
        if name not in table or option not in table[name]:
            raise unknown
        table[name][option] = _coerce(table[name][option], value, key)
        return {(name, option)} if head == "metrics" else set()
    owners = [name for name, section in sections.items() if key in section]
    metric_owners = [name for name, opts in metric_options.items() if key in opts and key not in ENGINE_FILLED]
    post_owners = [name for name, opts in post_options.items() if key in opts]
    if len(owners) + (1 if metric_owners else 0) + len(post_owners) > 1:
        places = ([f"{o}.{key}" for o in owners] + [f"metrics.{m}.{key}" for m in metric_owners]
                  + [f"postprocess.{p}.{key}" for p in post_owners])
        raise ConfigError(f"--set {key} is ambiguous; say one of {', '.join(places)}")
    if owners:
        section = sections[owners[0]]
        section[key] = _coerce(section[key], value, key)
        return set()
    if post_owners:
        post_options[post_owners[0]][key] = _coerce(post_options[post_owners[0]][key], value, key)
        return set()
    if metric_owners:
        for name in metric_owners:  # e.g. tolerance, variant: every metric that has it
            metric_options[name][key] = value
        return {(name, key) for name in metric_owners}
    raise unknown


def _coerce(default: Any, value: Any, key: str) -> Any:
    """``value`` of the type of ``default``: true/false for a bool, a finite number for a number (an integer for an
    int); anything else is a one-line ConfigError naming the key and the value."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"--set {key} expects true or false, got {value!r}")
        return value
    if isinstance(default, (int, float)) and (isinstance(value, bool) or not isinstance(value, (int, float))):
        kind = "an integer" if isinstance(default, int) else "a number"
        raise ConfigError(f"--set {key} expects {kind}, got {value!r}")
    if isinstance(default, (int, float)) and not math.isfinite(value):
        raise ConfigError(f"--set {key} expects a finite number, got {value!r}")
    if isinstance(default, float) and isinstance(value, int):
        return float(value)
    if isinstance(default, int) and isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise ConfigError(f"--set {key} expects an integer, got {value!r}")
    return value


def _unknown_key(key: str, sections: dict[str, dict], metric_options: dict[str, dict]) -> str:
    valid = sorted({k for s in sections.values() for k in s} | {k for o in metric_options.values() for k in o})
    import difflib

    close = difflib.get_close_matches(key.rpartition(".")[2], valid, n=3, cutoff=0.5)
    hint = f" did you mean {', '.join(close)}?" if close else ""
    return f"unknown --set key '{key}';{hint} valid keys: {', '.join(valid)}"
