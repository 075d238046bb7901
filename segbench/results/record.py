"""The run record: one JSON object per run, its schema, validation and ids.

A record says what ran (method, dataset, split, recipe, seed, resolved config,
dataset fingerprint, code versions), what it measured (metrics as fractions,
per-class values) and how (timings, environment). ``config_id`` hashes
everything that decides the numbers except the seed; ``run_id`` hashes
``config_id`` and the seed. See ``docs/records.md``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from segbench.errors import SegbenchError

SCHEMA_VERSION = 1
STATUSES = ("finished", "failed", "interrupted", "running")
ID_LENGTH = 16
RUN_ID_RE = re.compile(r"^[0-9a-f]{16}(-[1-9][0-9]*)?$")
CONFIG_ID_RE = re.compile(r"^[0-9a-f]{16}$")


class RecordError(SegbenchError, ValueError):
    """A run record that is not valid JSON or does not follow the schema."""


# -- ids -------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON types: tuples -> lists, paths -> str, numpy scalars -> Python numbers."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_jsonable(v) for v in value)
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if hasattr(value, "item"):  # numpy / torch scalars
        return _jsonable(value.item())
    if hasattr(value, "to_dict"):
        return _jsonable(value.to_dict())
    raise TypeError(f"cannot hash value of type {type(value).__name__}: {value!r}")


def canonical_json(value: Any) -> str:
    """The one JSON text of ``value`` that ids hash: sorted keys, no spaces, floats as ``repr``."""
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(value: Any) -> str:
    """First 16 hex characters of the sha256 of ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()[:ID_LENGTH]


def code_versions(environment: Mapping[str, Any], plugins: list[str] | None = None) -> dict[str, Any]:
    """The code versions that enter ``config_id``: segbench's version and plugin versions.

    ``plugins`` keeps only the named plugins (e.g. the one that provides the
    method) so that installing an unrelated plugin does not change the id.
    The git commit is not part of it: a commit that changes no code path of
    the run should still let seeds pool; bump a version to split them.
    """
    all_plugins = dict(environment.get("plugins") or {})
    if plugins is not None:
        all_plugins = {name: all_plugins.get(name) for name in plugins}
    return {"segbench": environment.get("segbench"), "plugins": all_plugins}


def make_config_id(
    config: Mapping[str, Any], fingerprint: str, versions: Mapping[str, Any], split: str | None = None,
    world_size: int = 1, train_fingerprint: str | None = None,
) -> str:
    """``config_id``: hash of the resolved config, the dataset fingerprints and the code versions.

    Pass the evaluation ``split`` unless ``fingerprint`` already identifies the
    split's data: runs on two splits must not share ids. ``world_size`` (the
    number of training processes; the effective batch size and the data
    order depend on it) enters the hash when it is not 1, so single-process
    ids are unchanged. ``train_fingerprint`` (the training split's files:
    list, annotations, image sizes) enters it when given; a generated
    dataset, whose samples follow from its options and generator version
    alone, passes None (see ``engine.run.train_fingerprint_for_id``).
    """
    payload: dict[str, Any] = {"config": config, "dataset_fingerprint": fingerprint, "code": versions}
    if split is not None:
        payload["split"] = split
    if world_size != 1:
        payload["world_size"] = int(world_size)
    if train_fingerprint is not None:
        payload["train_fingerprint"] = str(train_fingerprint)
    return short_hash(payload)


def make_run_id(config_id: str, seed: int) -> str:
    """``run_id``: hash of ``config_id`` and ``seed``."""
    return short_hash({"config_id": config_id, "seed": int(seed)})


def base_run_id(run_id: str) -> str:
    """``run_id`` without the ``-N`` suffix of a forced re-run."""
    return run_id.split("-", 1)[0]


def utc_now() -> str:
    """The current time as ISO 8601 UTC, to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- environment -----------------------------------------------------------------------------------
def collect_environment(device: str | None = None) -> dict[str, Any]:
    """Python, platform, torch/CUDA/device, segbench and plugin versions, git commit.

    torch is imported here, lazily; ``device`` (e.g. ``"cuda:0"``, ``"cpu"``)
    names the device the run used; by default the first GPU when there is one.
    """
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": None,
        "cuda": None,
        "device": device or "cpu",
        "segbench": _segbench_version(),
        "plugins": plugin_versions(),
        "libraries": library_versions(),
        "git_commit": git_commit(),
    }
    try:
        import torch
    except ImportError:
        return env
    env["torch"] = torch.__version__
    if torch.cuda.is_available():
        env["cuda"] = torch.version.cuda
        wanted = device or "cuda:0"
        if wanted.startswith("cuda"):
            index = int(wanted.split(":", 1)[1]) if ":" in wanted else 0
            env["device"] = f"{wanted} ({torch.cuda.get_device_name(index)})"
    return env


NUMERIC_LIBRARIES = ("torchvision", "timm", "numpy", "scipy", "pillow", "pycocotools", "faster-coco-eval",
                     "pydensecrf2")
"""Libraries besides torch whose version can change a run's numbers (timm's model definitions and inits, NumPy,
the COCO evaluators): recorded in every record, not hashed (see docs/records.md)."""


def library_versions() -> dict[str, str | None]:
    """The installed version of each of :data:`NUMERIC_LIBRARIES` (None when absent), read without importing."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in NUMERIC_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _segbench_version() -> str:
    from segbench import __version__

    return __version__


def plugin_versions() -> dict[str, str | None]:
    """``{entry point name: distribution version}`` for the ``segbench`` entry-point group."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    try:
        eps = metadata.entry_points(group="segbench")
    except Exception:  # a broken distribution's metadata must not stop a run
        return versions
    for ep in sorted(eps, key=lambda e: e.name):
        dist = getattr(ep, "dist", None)
        versions[ep.name] = dist.version if dist is not None else None
    return versions


def git_commit(path: str | os.PathLike | None = None, timeout: float = 2.0) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` (segbench's source), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=timeout,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


# -- the record --------------------------------------------------------------------------------------
@dataclass
class RunRecord:
    """One run: identity, resolved config, metrics (fractions), timings and environment."""

    run_id: str
    config_id: str
    status: str
    method: str
    dataset: str
    split: str
    recipe: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)
    dataset_identity: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float | None] = field(default_factory=dict)
    per_class: dict[str, dict[str, float | None]] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    confusion: dict[str, list[list[int]]] = field(default_factory=dict)
    """``{metric: C x C pixel counts}``, rows the ground truth, columns the prediction, void left out (``miou``)."""
    curves: dict[str, list[list[float | None]]] = field(default_factory=dict)
    """``{"loss": [[step, smoothed loss], ...], "val/<metric>": [[step, value or null], ...]}`` (``log_every``,
    ``eval_every``)."""
    effective_batch_size: int | None = None
    world_size: int = 1
    deterministic: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    """Peak memory and threads: ``peak_rss_mb``, ``cuda_max_allocated_mb`` (null off CUDA), ``threads``."""
    cost: dict[str, Any] = field(default_factory=dict)
    """The model's size and compute: ``parameters``, ``trainable_parameters``, ``forward_gflops`` (``predict`` on one
    image of ``flops_size``, the training crop; null where it depends on values, e.g. a detector's NMS) and
    ``train_gflops`` (forward x 3 x steps x effective batch: the training budget)."""
    resumes: list[dict[str, Any]] = field(default_factory=list)
    """One entry per resumed attempt: ``step`` it resumed from, ``checkpoint``, ``previous_status``, ``at``."""
    environment: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    error: str | None = None
    created_at: str = field(default_factory=utc_now)
    finished_at: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (from a newer writer); kept so a rewrite loses nothing."""

    @property
    def fingerprint(self) -> str:
        return str(self.dataset_identity.get("fingerprint", ""))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object written to disk (NaN metric values become null)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        data["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        data["per_class"] = {
            key: {name: _finite_or_none(v) for name, v in values.items()} for key, values in self.per_class.items()
        }
        data["error"] = _one_line(self.error)
        ordered = {"schema_version": data.pop("schema_version"), **data}
        return _jsonable({**ordered, **self.extra})

    def to_json(self) -> str:
        """``to_dict`` as indented JSON text (strict: no NaN)."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, source: str = "run record") -> "RunRecord":
        """Validate ``data`` against the schema and build the record; ``source`` names it in errors."""
        validate_record(data, source)
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        kwargs["metrics"] = {k: (None if v is None else float(v)) for k, v in data["metrics"].items()}
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_json(cls, text: str, source: str = "run record") -> "RunRecord":
        """Parse JSON text and validate it; a bad file is a one-line ``RecordError`` naming ``source``."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecordError(f"{source}: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunRecord":
        """Read and validate the record file at ``path``."""
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecordError(f"{path}: cannot read run record ({_reason(exc)})") from None
        return cls.from_json(text, str(path))


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _one_line(message: str | None) -> str | None:
    if message is None:
        return None
    return " ".join(str(message).split())


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


# -- validation --------------------------------------------------------------------------------------
_NUMBER = (int, float)
# name -> (allowed types, required)
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "schema_version": ((int,), True),
    "run_id": ((str,), True),
    "config_id": ((str,), True),
    "status": ((str,), True),
    "method": ((str,), True),
    "dataset": ((str,), True),
    "split": ((str,), True),
    "recipe": ((str,), True),
    "seed": ((int,), True),
    "config": ((dict,), True),
    "dataset_identity": ((dict,), True),
    "metrics": ((dict,), True),
    "created_at": ((str,), True),
    "per_class": ((dict,), False),
    "class_names": ((list,), False),
    "confusion": ((dict,), False),
    "curves": ((dict,), False),
    "effective_batch_size": ((int, type(None)), False),
    "world_size": ((int,), False),
    "deterministic": ((bool,), False),
    "timings": ((dict,), False),
    "resources": ((dict,), False),
    "cost": ((dict,), False),
    "resumes": ((list,), False),
    "environment": ((dict,), False),
    "weights": ((str, type(None)), False),
    "error": ((str, type(None)), False),
    "finished_at": ((str, type(None)), False),
}


def validate_record(data: Any, source: str = "run record") -> None:
    """Raise ``RecordError("<source>: <what is wrong>")`` unless ``data`` follows schema version 1."""

    def fail(what: str) -> None:
        raise RecordError(f"{source}: {what}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}")
    missing = [name for name, (_, required) in _FIELDS.items() if required and name not in data]
    if missing:
        fail(f"missing required field(s) {', '.join(missing)}")
    for name, (types, _) in _FIELDS.items():
        if name not in data:
            continue
        value = data[name]
        bad_bool = isinstance(value, bool) and bool not in types
        if bad_bool or not isinstance(value, types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            fail(f"field '{name}' must be {wanted}, got {json.dumps(value)[:60]}")
    version = data["schema_version"]
    if version != SCHEMA_VERSION:
        newer = " (written by a newer segbench; upgrade)" if version > SCHEMA_VERSION else ""
        fail(f"schema_version {version} is not supported, expected {SCHEMA_VERSION}{newer}")
    if not RUN_ID_RE.match(data["run_id"]):
        fail(f"run_id {data['run_id']!r} is not 16 hex characters (with an optional -N suffix)")
    if not CONFIG_ID_RE.match(data["config_id"]):
        fail(f"config_id {data['config_id']!r} is not 16 hex characters")
    if data["status"] not in STATUSES:
        fail(f"status {data['status']!r} is not one of {', '.join(STATUSES)}")
    for key, value in data["metrics"].items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUMBER)):
            fail(f"metric '{key}' must be a number or null, got {json.dumps(value)[:60]}")
    for key, values in data.get("per_class", {}).items():
        if not isinstance(values, dict) or any(
            v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER)) for v in values.values()
        ):
            fail(f"per_class '{key}' must map class names to numbers or null")
    for key, matrix in data.get("confusion", {}).items():
        problem = confusion_problem(matrix, len(data.get("class_names") or ()) or None)
        if problem:
            fail(f"confusion '{key}' {problem}")
    for key, points in data.get("curves", {}).items():
        problem = curve_problem(points)
        if problem:
            fail(f"curve '{key}' {problem}")
    fingerprint = data["dataset_identity"].get("fingerprint")
    if not isinstance(fingerprint, str):
        fail("dataset_identity.fingerprint must be a string")
    for name in ("created_at", "finished_at"):
        stamp = data.get(name)
        if stamp is not None and _parse_time(stamp) is None:
            fail(f"field '{name}' is not an ISO 8601 time: {stamp!r}")


def confusion_problem(matrix: Any, size: int | None = None) -> str | None:
    """What is wrong with a confusion matrix read from a record (None when it is a ``size`` x ``size`` list of
    lists of non-negative integers)."""
    if not isinstance(matrix, list) or not all(isinstance(row, list) for row in matrix):
        return "must be a list of rows (lists of pixel counts)"
    n = len(matrix)
    if size is not None and n != size:
        return f"has {n} rows for {size} classes"
    if any(len(row) != n for row in matrix):
        return f"must be square ({n} rows, each of {n} counts)"
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for row in matrix for v in row):
        return "must hold non-negative integer pixel counts"
    return None


def curve_problem(points: Any) -> str | None:
    """What is wrong with a curve read from a record (None when it is a list of ``[step, number or null]`` pairs,
    steps positive integers in increasing order)."""
    if not isinstance(points, list) or not all(isinstance(p, list) and len(p) == 2 for p in points):
        return "must be a list of [step, value] pairs"
    steps = [p[0] for p in points]
    if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in steps) or steps != sorted(set(steps)):
        return "must have increasing positive integer steps"
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, _NUMBER)) for _, v in points):
        return "must have numbers (or null) as values"
    return None


def _parse_time(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


__all__ = [
    "CONFIG_ID_RE", "RUN_ID_RE", "RecordError", "RunRecord", "SCHEMA_VERSION", "STATUSES",
    "base_run_id", "canonical_json", "code_versions", "collect_environment", "confusion_problem", "curve_problem",
    "git_commit",
    "make_config_id", "make_run_id", "plugin_versions", "short_hash", "utc_now", "validate_record",
]
