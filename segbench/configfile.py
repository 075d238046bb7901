"""Run config files: ``segbench run --config FILE.yaml``, ``segbench run --from RUN_ID`` and ``segbench config RUN_ID``.

A file (YAML, read with OmegaConf) holds what a ``segbench run`` command line
holds: the run options ``method``, ``dataset``, ``recipe``, ``seed``, ``split``,
``root``, and the sections ``train``, ``model``, ``data``, ``metrics`` (NAME:
options; the metrics named are the ones computed, as ``--metrics``) and
``postprocess`` (NAME: options, applied after the recipe's own, as
``--postprocess``). ``base:`` names files it inherits from (relative to it);
later keys win. The sections become the overrides ``--set`` gives
(``train.steps``, ``metrics.miou.ignore_index``, ...), so one validation applies
to both, and ``--set`` and explicit options win over the file.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from segbench.errors import ConfigError

RUN_OPTIONS = ("method", "dataset", "recipe", "seed", "split", "root")
SECTIONS = ("train", "model", "data")
NAMED = ("metrics", "postprocess")  # NAME: options; the names are chosen, the options become overrides
TOP_LEVEL = ("base", *RUN_OPTIONS, *SECTIONS, *NAMED)
FIELD_OPTIONS = {"init": "train.init", "amp": "train.amp", "deterministic": "train.deterministic",
                 "weights": "model.weights"}  # run command options that are config fields: in their sections


@dataclass
class RunSettings:
    """What config files (or a finished run) say about a run, as ``segbench run`` takes it."""

    options: dict[str, Any] = field(default_factory=dict)  # method, dataset, recipe, seed, split, root
    metrics: list[str] | None = None  # None: every applicable metric
    postprocess: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # as --set gives them: train.steps, model.kmax, ...
    sources: dict[str, str] = field(default_factory=dict)  # each key above -> the file (or run) that set it


def read_run_settings(config: str | None, from_run: str | None, runs: str | None) -> RunSettings:
    """``--from RUN_ID`` (the run's settings), then ``--config FILE`` over them; a one-line ConfigError for any
    problem, naming the file."""
    layers: list[tuple[dict, dict]] = []
    if from_run:
        label = f"run {from_run}"
        settings = record_settings(_record(from_run, runs, "--from "))
        layers.append((settings, _leaves(settings, label)))
    if config:
        layers.append(_read(Path(config), ()))
    merged, sources = _merge(layers)
    data = _resolve(merged, config or f"run {from_run}")
    return _settings(data, sources)


def combine(settings: RunSettings, command_line: Mapping[str, Any], given: set[str],
            overrides: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    """``run_experiment``'s arguments: the ``command_line``'s where ``given``, else the file's; the file's
    post-processors before the command line's; the file's overrides before ``--set``'s (which win). Returns the
    arguments, the overrides and where the file's came from."""
    args = dict(command_line)
    for key in RUN_OPTIONS:
        if key not in given and settings.options.get(key) is not None:
            args[key] = settings.options[key]
    if "metrics" not in given and settings.metrics is not None:
        args["metrics"] = list(settings.metrics)
    args["postprocess"] = [*settings.postprocess, *command_line.get("postprocess", ())]
    chosen = args.get("metrics")
    kept = {key: value for key, value in settings.overrides.items()  # options of metrics --metrics left out go
            if not (chosen is not None and key.startswith("metrics.") and key.split(".")[1] not in chosen)}
    _check_names(args, settings, given)
    sources = {key: where for key, where in settings.sources.items() if key not in overrides}
    return args, {**kept, **overrides}, sources


def record_settings(record: Mapping[str, Any]) -> dict[str, Any]:
    """A run record's resolved config as config-file settings that resolve to the same config (and ``config_id``).

    A record older than a train field or a method option gets its neutral value
    (what it trained with), a renamed option its new name; the post-processors
    are the run's chain, with ``none`` first when it dropped the recipe's own.
    """
    from segbench.engine.config import LATE_TRAIN_FIELDS
    from segbench.plugins import get_registry

    config = record["config"]
    registry = get_registry()
    method = registry.method(config["method"])
    new_names = {old: new for new, old in method.renamed_options.items()}
    model = {new_names.get(k, k): v for k, v in config["model"].items()}
    train = dict(config["train"])
    postprocess = {name: dict(options) for name, options in config.get("postprocess", {}).items()}
    recipe = method.recipes.get(config["recipe"])
    if recipe is not None and not set(recipe.postprocess) <= set(postprocess):
        postprocess = {"none": {}, **postprocess}
    settings = {"method": config["method"], "dataset": config["dataset"], "recipe": config["recipe"],
                "seed": record["seed"], "split": record["split"]}
    root = record.get("dataset_identity", {}).get("root")  # where its files were read (datasets from files)
    if root:
        settings["root"] = root
    return {**settings,
            "train": {**train, **{k: v for k, v in LATE_TRAIN_FIELDS.items() if k not in train}},
            "model": {**model, **{k: v for k, v in method.late_options.items() if k not in model}},
            "data": dict(config["data"]),
            "metrics": {name: _chosen(options, registry.metrics.get(name)) for name, options in
                        config.get("metrics", {}).items()},
            "postprocess": postprocess}


def _chosen(options: Mapping[str, Any], spec: Any) -> dict[str, Any]:
    """A metric's options less those the engine fills (``num_classes``, ...) left at the metric's default."""
    from segbench.engine.config import ENGINE_FILLED

    defaults = spec.options if spec is not None else {}
    return {k: v for k, v in options.items() if not (k in ENGINE_FILLED and k in defaults and v == defaults[k])}


def record_yaml(run_id: str, runs: str | None) -> str:
    """``segbench config RUN_ID``: the run's settings as YAML that ``segbench run --config`` takes."""
    from omegaconf import OmegaConf

    record = _record(run_id, runs, "")
    header = [f"# segbench config {record['run_id']}: config_id {record['config_id']}, status {record['status']}",
              "# segbench run --config THIS_FILE runs it again (the same config_id); --set KEY=VALUE changes it"]
    if record.get("world_size", 1) != 1:
        header.append(f"# trained on {record['world_size']} processes: add --nproc {record['world_size']} for the "
                      f"same config_id")
    body = OmegaConf.to_yaml(OmegaConf.create(_escape(record_settings(record))), sort_keys=False)
    return "\n".join(header) + "\n" + body


# -- reading files ------------------------------------------------------------------------------------------------
def _read(path: Path, chain: tuple[Path, ...]) -> tuple[dict, dict]:
    """One file over its bases: (settings, key -> the file that set it last)."""
    seen = [p.resolve() for p in chain]
    if path.resolve() in seen:
        cycle = " -> ".join(str(p) for p in (*chain[seen.index(path.resolve()):], path))
        raise ConfigError(f"{chain[-1]}: base cycle {cycle}")
    if not path.is_file():
        raise ConfigError(f"{chain[-1]}: base file {path} does not exist" if chain else f"{path}: no such config file")
    raw = _load(path)
    bases = raw.pop("base", None)
    bases = [bases] if isinstance(bases, str) else bases
    if bases is not None and (not isinstance(bases, list) or not all(isinstance(b, str) for b in bases)):
        raise ConfigError(f"{path}: base must be a file name or a list of them, got {bases!r}")
    own = _normalise(raw, path)
    layers = [_read(path.parent / base, (*chain, path)) for base in bases or ()]
    layers.append((own, _leaves(own, str(path))))
    return _merge(layers)


def _load(path: Path) -> dict:
    """The file's YAML as plain Python values (interpolations kept for later); a one-line error with the line."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    try:
        loaded = OmegaConf.load(path)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: {where}not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"{path}: a config file is a mapping of keys ({', '.join(TOP_LEVEL)}), got a list")
    return OmegaConf.to_container(loaded, resolve=False)


def _normalise(raw: dict, path: Path) -> dict:
    """Check the file's keys and the shape of its sections; ``metrics`` / ``postprocess`` as NAME: options."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in TOP_LEVEL:
            raise ConfigError(f"{path}: unknown key '{key}';{_hint(str(key))} valid keys: {', '.join(TOP_LEVEL)}")
        if key in SECTIONS:
            value = {} if value is None else value
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {key} must be a mapping of {key} options, got {value!r}")
        elif key in NAMED:
            value = _named(key, value, path)
        elif key == "seed" and value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"{path}: seed expects an integer, got {value!r}")
        elif key != "seed" and value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key} expects a name, got {value!r}")
        out[key] = value
    if (out.get("train") or {}).get("amp") is False:  # YAML 1.1 reads a bare off as false
        out["train"]["amp"] = "off"
    return out


def _named(key: str, value: Any, path: Path) -> dict[str, dict]:
    """``[a, b]``, ``a,b`` or ``{a: {option: value}, b: null}`` -> ``{a: {...}, b: {}}``."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{path}: {key} must list names, got {value!r}")
        return {name: {} for name in value}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key} must be names or a mapping NAME: options, got {value!r}")
    out = {}
    for name, options in value.items():
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ConfigError(f"{path}: {key}.{name} must be a mapping of options, got {options!r}")
        out[str(name)] = options
    return out


def _hint(key: str) -> str:
    if key in FIELD_OPTIONS:
        return f" did you mean {FIELD_OPTIONS[key]}?"
    from segbench.engine.config import TRAIN_KEYS

    if key in TRAIN_KEYS:
        return f" did you mean train.{key}?"
    close = difflib.get_close_matches(key, TOP_LEVEL, n=3, cutoff=0.5)
    return f" did you mean {', '.join(close)}?" if close else ""


def _leaves(settings: Mapping[str, Any], source: str) -> dict[str, str]:
    """Every key ``settings`` sets, as an override key (``train.steps``, ``metrics.miou``, ...) -> ``source``."""
    out = {}
    for key, value in settings.items():
        if key in SECTIONS or key in NAMED:
            for name, inner in value.items():
                out[f"{key}.{name}"] = source
                if key in NAMED:
                    out.update({f"{key}.{name}.{option}": source for option in inner})
        else:
            out[key] = source
    return out


def _merge(layers: list[tuple[dict, dict]]) -> tuple[dict, dict]:
    """Later layers win, key by key (OmegaConf's merge: mappings merged, lists replaced)."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(*(OmegaConf.create(settings) for settings, _ in layers)) if layers else {}
    sources: dict[str, str] = {}
    for _, where in layers:
        sources.update(where)
    return OmegaConf.to_container(OmegaConf.create(merged), resolve=False), sources


def _resolve(merged: dict, label: str) -> dict:
    """Interpolations (``${train.steps}``) resolved over the merged settings."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        return OmegaConf.to_container(OmegaConf.create(merged), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"{label}: {str(exc).splitlines()[0]}") from None


def _settings(data: Mapping[str, Any], sources: dict[str, str]) -> RunSettings:
    """Merged settings as run options, chosen names and ``--set`` overrides."""
    overrides = {f"{section}.{key}": value for section in SECTIONS for key, value in data.get(section, {}).items()}
    for head in NAMED:
        for name, options in data.get(head, {}).items():
            overrides.update({f"{head}.{name}.{key}": value for key, value in options.items()})
    return RunSettings(options={k: data[k] for k in RUN_OPTIONS if data.get(k) is not None},
                       metrics=list(data["metrics"]) if "metrics" in data else None,
                       postprocess=list(data.get("postprocess", {})), overrides=overrides, sources=sources)


def _check_names(args: Mapping[str, Any], settings: RunSettings, given: set[str]) -> None:
    """The method, dataset, recipe, metrics and post-processors a file names exist; else one line naming the file."""
    from segbench.plugins import get_registry, unknown_name_message

    registry = get_registry()
    where = settings.sources
    checks = [("method", "method", args["method"], registry.methods),
              ("dataset", "dataset", args["dataset"], registry.datasets)]
    if args["method"] in registry.methods:
        checks.append(("recipe", f"recipe of method '{args['method']}'", args.get("recipe"),
                       registry.methods[args["method"]].recipes))
    checks += [(f"metrics.{name}", "metric", name, registry.metrics) for name in args.get("metrics") or ()
               if "metrics" not in given]
    checks += [(f"postprocess.{name}", "postprocessor", name, {**registry.postprocessors, "none": None})
               for name in settings.postprocess]
    for key, kind, name, known in checks:
        if key in where and key.partition(".")[0] not in given and name is not None and name not in known:
            raise ConfigError(f"{where[key]}: {unknown_name_message(kind, name, known)}")


def _record(run_id: str, runs: str | None, prefix: str) -> dict:
    """The record of ``run_id`` (a unique prefix) in the runs directory; a one-line ConfigError starting with
    ``prefix`` when there is none."""
    from segbench.engine.run import runs_dir
    from segbench.results.store import RunStore

    try:
        return RunStore(runs_dir(runs)).get(run_id).to_dict()
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unknown, ambiguous or unreadable record: one line
        raise ConfigError(f"{prefix}{run_id}: {exc}" if prefix else str(exc)) from None


def _escape(value: Any) -> Any:
    """Strings with ``${`` written so that OmegaConf reads them back as they are, not as interpolations."""
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value
