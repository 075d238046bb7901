"""Sweeps: the grid methods x datasets x seeds, each cell one ``segbench run`` command.

This module plans a sweep (validates every name and ``--set`` key before
anything starts, builds the commands, finds the cells already finished),
reads what each command left behind, and prints the summary table. The
launchers that run the commands (local subprocesses, submitit for SLURM) are
in :mod:`segbench.sweep_launchers`. Importing it does not import torch or
submitit. See ``docs/sweeps.md``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from segbench.errors import ConfigError, SegbenchError

SKIPPED = "skipped (finished)"
"""Status of a cell whose identical run had already finished (found by the pre-check or by the run itself)."""
STATUSES = ("finished", SKIPPED, "failed", "interrupted", "not run", "submitted")
OK_STATUSES = ("finished", SKIPPED)
LAUNCHERS = ("local", "slurm", "submitit-local")


class SweepError(SegbenchError):
    """A sweep that cannot be planned or submitted (bad grid, executor option, submission failure)."""


@dataclass
class SweepSpec:
    """What a sweep runs: the grid, the recipe and overrides, where records go, how each run is started."""

    methods: list[str]
    datasets: list[str]
    seeds: list[int]
    recipe: str | None = None  # None: each cell's dataset default (paper on real data, quick on shapes), as `run`
    overrides: list[str] = field(default_factory=list)
    """``key=value`` strings, passed to every run as ``--set key=value``."""
    runs_dir: Path = Path("runs")
    device: str | None = None
    nproc: int = 1
    extra_args: list[str] = field(default_factory=list)
    """More ``segbench run`` arguments, appended as given."""


@dataclass
class SweepJob:
    """One cell of the grid and the command that runs it."""

    index: int
    method: str
    dataset: str
    seed: int
    command: list[str]
    finished: dict | None = None
    """The finished record the pre-check found for this cell (the cell is then skipped), else None."""
    status_before: str | None = None
    """Status of the latest matching record before the sweep (any status), for ``--dry-run``."""

    @property
    def name(self) -> str:
        """``method-dataset-sSEED``: the cell's log file stem."""
        return f"{self.method}-{self.dataset}-s{self.seed}"


@dataclass
class JobResult:
    """How one cell ended."""

    job: SweepJob
    status: str
    run_id: str | None = None
    seconds: float | None = None
    error: str | None = None
    record_path: str | None = None
    log: str | None = None
    """Where the run's output went (a log file, or submitit's job folder)."""


# -- parsing -----------------------------------------------------------------------------------------
def parse_names(text: str, what: str) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]`` (order kept, duplicates dropped); empty is a ``ConfigError``."""
    names = list(dict.fromkeys(part.strip() for part in str(text).split(",") if part.strip()))
    if not names:
        raise ConfigError(f"--{what} needs at least one name, got {text!r}")
    return names


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-4"`` (inclusive) or a mix -> distinct integer seeds, in order."""
    seeds: list[int] = []
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        try:
            if match:
                low, high = int(match[1]), int(match[2])
                if high < low:
                    raise ValueError
                seeds.extend(range(low, high + 1))
            else:
                seeds.append(int(part))
        except ValueError:
            raise ConfigError(
                f"--seeds expects integers or ranges like 0-4 separated by commas, got {part!r}") from None
    if not seeds:
        raise ConfigError(f"--seeds needs at least one seed, got {text!r}")
    return list(dict.fromkeys(seeds))


# -- planning ----------------------------------------------------------------------------------------
def validate_grid(spec: SweepSpec, registry: Any = None) -> dict[tuple[str, str], str]:
    """Check every method, dataset, pairing, the recipe and the ``--set`` keys; nothing runs.

    Returns ``{(method, dataset): canonical JSON of the resolved config}``.
    Raises the first problem as a one-line ``SegbenchError`` (exit 2):
    ``UnknownNameError`` with the closest names, or ``ConfigError`` naming the
    cell.
    """
    from segbench.engine.config import identity_dict, parse_overrides, resolve_config
    from segbench.engine.run import applicable_metrics, check_pairing, postprocess_chain
    from segbench.plugins import get_registry
    from segbench.results.record import canonical_json

    registry = registry or get_registry()
    methods = {name: registry.method(name) for name in spec.methods}  # UnknownNameError, closest names
    datasets = {name: registry.dataset(name) for name in spec.datasets}
    if spec.nproc < 1:
        raise ConfigError(f"--nproc must be at least 1, got {spec.nproc}")
    overrides = parse_overrides(spec.overrides)
    configs: dict[tuple[str, str], str] = {}
    for method_name, method in methods.items():
        for dataset_name, dataset in datasets.items():
            try:
                check_pairing(method, dataset)
                chain, outputs = postprocess_chain(method, dataset, registry)
                metrics = applicable_metrics(method, dataset, registry, None, outputs)
                config = resolve_config(method, dataset, metrics, cell_recipe(spec, method, dataset), overrides,
                                        chain)
            except SegbenchError as exc:
                raise type(exc)(f"{method_name} on {dataset_name}: {exc}") from None
            configs[(method_name, dataset_name)] = canonical_json(
                identity_dict(config.to_dict(), late_options=methods[method_name].late_options,
                              renamed_options=methods[method_name].renamed_options,
                              path_options=dataset.path_options))
    return configs


def cell_recipe(spec: SweepSpec, method: Any, dataset: Any) -> str:
    """The recipe of one cell: the sweep's, else the dataset's default for the method (as ``segbench run``)."""
    from segbench.engine.config import default_recipe

    return spec.recipe or default_recipe(method, dataset)[0]


def run_command(spec: SweepSpec, method: str, dataset: str, seed: int) -> list[str]:
    """The ``segbench run`` command of one cell (``python -m segbench run ... --nproc N`` for N > 1)."""
    from segbench.plugins import get_registry

    registry = get_registry()
    recipe = cell_recipe(spec, registry.method(method), registry.dataset(dataset))
    command = [sys.executable, "-m", "segbench", "run", "--method", method, "--dataset", dataset,
               "--recipe", recipe, "--seed", str(seed), "--runs-dir", str(Path(spec.runs_dir).absolute()),
               "--quiet"]
    for item in spec.overrides:
        command += ["--set", item]
    if spec.device:
        command += ["--device", spec.device]
    if spec.nproc > 1:
        command += ["--nproc", str(spec.nproc)]
    return command + list(spec.extra_args)


def plan_sweep(spec: SweepSpec, registry: Any = None, precheck: bool = True) -> list[SweepJob]:
    """Validate the grid (:func:`validate_grid`) and return its cells, method-major, with their commands.

    With ``precheck``, a cell whose identical run already finished in
    ``spec.runs_dir`` carries that record in :attr:`SweepJob.finished`: same
    method, dataset, split, recipe, seed, resolved config, number of processes
    and code versions (segbench and the method's plugin). The dataset
    fingerprint is not compared (computing it means building the dataset); a
    run started anyway makes the exact decision, with its full config id.
    """
    from segbench.plugins import get_registry

    registry = registry or get_registry()
    configs = validate_grid(spec, registry)
    records = _records(spec.runs_dir)
    jobs = []
    for method in spec.methods:
        for dataset in spec.datasets:
            split = registry.dataset(dataset).eval_split
            versions = _versions(registry.method(method).plugin)
            for seed in spec.seeds:
                job = SweepJob(len(jobs) + 1, method, dataset, seed, run_command(spec, method, dataset, seed))
                recipe = cell_recipe(spec, registry.method(method), registry.dataset(dataset))
                matching = [r for r in records if _same_cell(r, method, dataset, split, recipe, seed,
                                                             configs[(method, dataset)], spec.nproc, versions)]
                if matching:
                    latest = max(matching, key=lambda r: (r.finished_at or r.created_at, r.run_id))
                    job.status_before = latest.status
                    done = [r for r in matching if r.status == "finished"]
                    if precheck and done:
                        job.finished = max(done, key=lambda r: (r.finished_at or r.created_at, r.run_id)).to_dict()
                jobs.append(job)
    return jobs


def _records(runs_dir: str | os.PathLike) -> list:
    from segbench.results.store import RunStore

    return list(RunStore(runs_dir).iter_records(on_error=lambda path, message: None))


def _versions(plugin: str) -> dict[str, Any]:
    from segbench import __version__
    from segbench.results.record import plugin_versions

    installed = plugin_versions()
    return {"segbench": __version__, "plugin": (plugin, installed.get(plugin)) if plugin in installed else None}


def _same_cell(record: Any, method: str, dataset: str, split: str, recipe: str, seed: int, config: str,
               nproc: int, versions: dict[str, Any]) -> bool:
    from segbench.results.record import canonical_json

    if (record.method, record.dataset, record.split, record.recipe, record.seed) != (method, dataset, split, recipe,
                                                                                    seed):
        return False
    if record.world_size != nproc or record.environment.get("segbench") != versions["segbench"]:
        return False
    if versions["plugin"] is not None:
        name, version = versions["plugin"]
        if (record.environment.get("plugins") or {}).get(name) != version:
            return False
    from segbench.engine.config import identity_dict
    from segbench.plugins import get_registry

    try:
        registry = get_registry()
        spec = registry.method(method)
        dataset = registry.datasets.get(record.dataset)
        paths = dataset.path_options if dataset is not None else ()
        mine = identity_dict(record.config, late_options=spec.late_options, renamed_options=spec.renamed_options,
                             path_options=paths)
        return canonical_json(mine) == config
    except TypeError:
        return False


# -- reading what a run left -------------------------------------------------------------------------
_RECORD_LINE = re.compile(r"^record: (.+\.json)\s*$", re.M)
_REUSED_LINE = re.compile(r"identical run already finished: (.+?\.json)")
_RECORD_IN_ERROR = re.compile(r"\(record: ([^()]+\.json)\)")
_RUN_LINE = re.compile(r"^run ([0-9a-f]{16}(?:-\d+)?): ", re.M)


def last_line(text: str | None) -> str | None:
    """The last non-empty line of ``text`` (a run's stderr), stripped; None when there is none."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def job_result(job: SweepJob, returncode: int, stdout: str, stderr: str, seconds: float | None = None,
               log: str | None = None) -> JobResult:
    """The outcome of one ``segbench run`` command from its exit code and output.

    Exit 0: the record named on the ``record:`` line says the status; ``identical
    run already finished`` makes it :data:`SKIPPED`. Otherwise ``failed`` (or
    ``interrupted`` for exit 130 / a signal), with the record's ``error`` when
    the run wrote one, else the last line of stderr.
    """
    reused = _REUSED_LINE.search(stdout or "")
    found = _RECORD_LINE.findall(stdout or "")
    path = (found[-1] if found else None) or (reused[1] if reused else None)
    if path is None:
        match = _RECORD_IN_ERROR.findall(stderr or "")
        path = match[-1] if match else None
    if path is None:  # e.g. interrupted: the run's first line names its id ("run 0123...: ...")
        match = _RUN_LINE.findall(stderr or "")
        if match and "--runs-dir" in job.command:
            path = str(Path(job.command[job.command.index("--runs-dir") + 1]) / f"{match[-1]}.json")
    record = _load(path)
    run_id = record.get("run_id") if record else None
    if returncode == 0:
        if reused:
            return JobResult(job, SKIPPED, run_id, seconds, record_path=path, log=log)
        status = record.get("status", "finished") if record else "finished"
        error = record.get("error") if record and status != "finished" else None
        return JobResult(job, status, run_id, seconds, error, path, log)
    interrupted = returncode in (130, -2, -15, 143) or (record or {}).get("status") == "interrupted"
    error = (record or {}).get("error") or last_line(stderr) or f"exit code {returncode}"
    return JobResult(job, "interrupted" if interrupted else "failed", run_id, seconds, error, path, log)


def _load(path: str | None) -> dict | None:
    if not path:
        return None
    from segbench.results.record import RecordError, RunRecord

    try:
        return RunRecord.load(path).to_dict()
    except RecordError:
        return None


def skipped_result(job: SweepJob) -> JobResult:
    """The result of a cell the pre-check found finished."""
    record = job.finished or {}
    return JobResult(job, SKIPPED, record.get("run_id"), None)


# -- tables ------------------------------------------------------------------------------------------
def grid_table(jobs: Sequence[SweepJob]) -> str:
    """The ``--dry-run`` listing: one row per cell, what the sweep would do, and its command."""
    from tabulate import tabulate

    rows = []
    for job in jobs:
        action = SKIPPED if job.finished else "run"
        if not job.finished and job.status_before:
            action = f"run (last: {job.status_before})"
        rows.append([job.index, job.method, job.dataset, job.seed, action, _shell(job.command)])
    return tabulate(rows, headers=["#", "method", "dataset", "seed", "action", "command"], tablefmt="simple")


def summary_table(results: Sequence[JobResult]) -> str:
    """One row per cell: status, run id, wall time and, for a failure, its error."""
    from tabulate import tabulate

    rows = []
    for result in sorted(results, key=lambda r: r.job.index):
        seconds = "-" if result.seconds is None else f"{result.seconds:.1f}"
        rows.append([result.job.index, result.job.method, result.job.dataset, result.job.seed, result.status,
                     result.run_id or "-", seconds, result.error or ""])
    table = tabulate(rows, headers=["#", "method", "dataset", "seed", "status", "run", "time (s)", "error"],
                     tablefmt="simple", disable_numparse=True)
    counts: dict[str, int] = {}
    for result in results:
        counts[result.status] = counts.get(result.status, 0) + 1
    tally = ", ".join(f"{n} {status}" for status, n in sorted(counts.items(), key=lambda kv: _status_order(kv[0])))
    return f"{table}\n\n{_runs(len(results))}: {tally}"


def _runs(count: int) -> str:
    return f"{count} run" + ("" if count == 1 else "s")


def _status_order(status: str) -> int:
    return STATUSES.index(status) if status in STATUSES else len(STATUSES)


def _shell(command: Sequence[str]) -> str:
    import shlex

    shown = ["segbench" if i == 0 else part for i, part in enumerate(command) if i not in (1, 2)]
    return shlex.join(shown)


# -- the whole sweep -----------------------------------------------------------------------------------
DEFAULT_TIMEOUT_MIN = 60
"""Time limit of each submitit job unless ``--timeout-min`` or ``--slurm time=...`` says otherwise."""


def execute(spec: SweepSpec, launcher: str = "local", at_once: int | None = None,
            slurm: dict[str, Any] | None = None, log_dir: str | os.PathLike | None = None, dry_run: bool = False,
            precheck: bool = True, echo=lambda message: None, out=print, env: dict[str, str] | None = None) -> int:
    """Plan, validate and run a sweep; print the grid (``dry_run``) or the summary table; return the exit code.

    Everything is checked before anything starts: names, pairings, recipe,
    ``--set`` keys and the submitit options (``slurm``: ``update_parameters``
    keywords). ``spec.nproc`` 0 means: the GPUs per node of a submitit job
    (``segbench run --nproc N`` when N > 1), else 1.
    """
    from segbench import sweep_launchers as launchers

    if launcher not in LAUNCHERS:
        raise ConfigError(f"unknown launcher {launcher!r}; launchers: {', '.join(LAUNCHERS)}")
    slurm = dict(slurm or {})
    if launcher == "local" and slurm:
        raise ConfigError("SLURM options (--slurm, --partition, --gpus-per-node, --timeout-min) need "
                          "--launcher slurm or submitit-local")
    if launcher != "local" and not ({"timeout_min", "slurm_time"} & set(slurm)):
        slurm["timeout_min"] = DEFAULT_TIMEOUT_MIN
    if not spec.nproc:
        gpus = launchers.gpus_per_node(slurm) if launcher != "local" else 0
        spec = dataclasses.replace(spec, nproc=gpus if gpus > 1 else 1)
    jobs = plan_sweep(spec, precheck=precheck)
    logs = Path(log_dir) if log_dir else Path(spec.runs_dir) / ".sweep"
    cluster = "slurm" if launcher == "slurm" else "local"
    executor = None
    if launcher != "local":
        import shutil
        import tempfile

        launchers.check_parameters(slurm)  # names and generic types, anywhere, writing nothing
        if not dry_run:
            executor = launchers.make_executor(cluster, logs / "submitit", slurm)
        elif cluster == "slurm" and shutil.which("srun"):  # SLURM values too, where srun is
            with tempfile.TemporaryDirectory() as folder:
                launchers.make_executor(cluster, folder, slurm)
    todo = [job for job in jobs if not job.finished]
    if dry_run:
        out(grid_table(jobs))
        where = f"{launcher} launcher" + (f", {at_once} at a time" if at_once else "")
        out(f"\n{_runs(len(jobs))}: {len(todo)} to run, {len(jobs) - len(todo)} {SKIPPED} ({where}; nothing started)")
        return 0
    results = [skipped_result(job) for job in jobs if job.finished]
    if todo:
        echo(f"sweep: {len(todo)} run(s) to start, {len(results)} {SKIPPED}; logs under {logs}")
    if todo and launcher == "local":
        results += launchers.run_local(todo, at_once or 1, logs / "logs", echo, env=env)
    elif todo:
        results += launchers.run_submitit(todo, executor, at_once, echo, poll_s=0.5 if cluster == "local" else 15)
    out(summary_table(results))
    return exit_code(results)


def exit_code(results: Sequence[JobResult]) -> int:
    """0 when every cell finished or was skipped, 130 when one was interrupted, else 1."""
    if any(r.status == "interrupted" for r in results):
        return 130
    return 0 if all(r.status in OK_STATUSES for r in results) else 1


__all__ = [
    "DEFAULT_TIMEOUT_MIN", "JobResult", "LAUNCHERS", "OK_STATUSES", "SKIPPED", "STATUSES", "SweepError", "SweepJob",
    "SweepSpec", "execute", "exit_code", "grid_table", "job_result", "last_line", "parse_names", "parse_seeds",
    "plan_sweep", "run_command", "skipped_result", "summary_table", "validate_grid",
]
