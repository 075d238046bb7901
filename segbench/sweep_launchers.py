"""Launchers for sweeps: local subprocesses (K at a time) and submitit (SLURM, or its local executor).

Each job is one ``segbench run`` command (:func:`segbench.sweep.run_command`);
its outcome is read back by :func:`segbench.sweep.job_result`. submitit is
imported only by the submitit launchers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from segbench.sweep import JobResult, SweepError, SweepJob, job_result, last_line

Echo = Callable[[str], None]

AUTO_PARAMETERS = ("name", "timeout_min", "mem_gb", "nodes", "cpus_per_task", "gpus_per_node", "tasks_per_node",
                   "stderr_to_stdout")
"""submitit's generic parameters (AutoExecutor); any other ``--slurm`` key gets the ``slurm_`` prefix."""


def _progress(echo: Echo, done: int, total: int, result: JobResult) -> None:
    job = result.job
    seconds = f" in {result.seconds:.1f} s" if result.seconds is not None else ""
    error = f": {result.error}" if result.error else ""
    echo(f"[{done}/{total}] {job.method} on {job.dataset}, seed {job.seed}: {result.status}{seconds}{error}")


# -- local ------------------------------------------------------------------------------------------
def run_local(jobs: Sequence[SweepJob], at_once: int, log_dir: str | os.PathLike, echo: Echo = lambda m: None,
              poll_s: float = 0.2, env: dict[str, str] | None = None) -> list[JobResult]:
    """Run the commands as subprocesses, ``at_once`` at a time; each writes ``log_dir/<cell>.out|.err``.

    Ctrl-C (or SIGTERM) is passed once to every running command (each stops at
    a step boundary with a checkpoint, so a later sweep resumes it); cells not
    yet started are reported ``not run``.
    """
    if at_once < 1:
        raise SweepError(f"--jobs must be at least 1, got {at_once}")
    logs = Path(log_dir)
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[int, tuple[SweepJob, subprocess.Popen, float, Path, Path]] = {}
    results: list[JobResult] = []
    not_started: list[JobResult] = []
    stopping = False

    def on_term(signum, frame):  # SIGTERM to the sweep: stop like Ctrl-C
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        while pending or running:
            try:
                while pending and len(running) < at_once and not stopping:
                    job = pending.pop(0)
                    out, err = logs / f"{job.name}.out", logs / f"{job.name}.err"
                    with open(out, "wb") as stdout, open(err, "wb") as stderr:
                        # a session of its own: a Ctrl-C reaches the command once, forwarded from here
                        process = subprocess.Popen(job.command, stdout=stdout, stderr=stderr,
                                                   stdin=subprocess.DEVNULL, start_new_session=True, env=env)
                    running[job.index] = (job, process, time.perf_counter(), out, err)
                for index, (job, process, started, out, err) in list(running.items()):
                    code = process.poll()
                    if code is None:
                        continue
                    del running[index]
                    result = job_result(job, code, _read(out), _read(err), time.perf_counter() - started,
                                        log=str(err))
                    results.append(result)
                    _progress(echo, len(results), len(jobs), result)
                time.sleep(poll_s)
            except KeyboardInterrupt:
                if stopping:  # a second Ctrl-C: stop the commands now
                    for _, process, *_ in running.values():
                        process.kill()
                    continue
                stopping = True
                echo(f"stopping: {len(running)} running run(s) will checkpoint and stop; Ctrl-C again to kill them")
                for _, process, *_ in running.values():
                    process.send_signal(signal.SIGINT)
                not_started, pending = [JobResult(job, "not run") for job in pending], []
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results + not_started


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


# -- submitit -----------------------------------------------------------------------------------------
def slurm_parameters(items: Sequence[str], **named: Any) -> dict[str, Any]:
    """``--slurm key=value`` items plus the named options (None = unset) -> ``update_parameters`` keywords.

    Generic submitit keys (``timeout_min``, ``gpus_per_node``...) stay as they
    are; any other key gets the ``slurm_`` prefix unless it has one
    (``partition`` -> ``slurm_partition``). Values parse like ``--set`` values.
    """
    from segbench.engine.config import parse_value

    params: dict[str, Any] = {}
    for key, value in named.items():
        if value is not None:
            params[_slurm_key(key)] = value
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--slurm expects key=value, got {item!r}")
        params[_slurm_key(key.strip())] = parse_value(value.strip())
    return params


def _slurm_key(key: str) -> str:
    key = key.replace("-", "_")
    return key if key in AUTO_PARAMETERS or key.startswith(("slurm_", "local_")) else f"slurm_{key}"


def make_executor(cluster: str, folder: str | os.PathLike, parameters: dict[str, Any]):
    """A submitit ``AutoExecutor(folder, cluster=cluster)`` with ``parameters``.

    A parameter submitit rejects is a one-line ``SweepError`` with submitit's
    own message (before anything is submitted).
    """
    try:
        import submitit
    except ImportError:
        raise SweepError("the slurm and submitit-local launchers need submitit, the extra segbench[slurm]: "
                         "pip install 'segbench[slurm]' (or pip install submitit)") from None
    try:
        executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    except (RuntimeError, ValueError) as exc:  # e.g. no srun on this machine
        raise SweepError(f"cannot use submitit's {cluster} executor: {_first_line(exc)}") from None
    try:
        executor.update_parameters(**parameters)
    except (NameError, ValueError, TypeError, AssertionError) as exc:
        raise SweepError(f"submitit rejected an executor option: {_first_line(exc)}") from None
    return executor


def check_parameters(parameters: dict[str, Any]) -> None:
    """Validate ``parameters`` by name and generic type without a SLURM cluster (submitit's local executor).

    Used by ``--dry-run`` where ``srun`` is missing; SLURM values are then
    checked only at submission.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        make_executor("local", folder, parameters)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def gpus_per_node(parameters: dict[str, Any]) -> int:
    """The GPUs each job asks for (``gpus_per_node`` or ``slurm_gpus_per_node``), 0 when unset."""
    value = parameters.get("gpus_per_node", parameters.get("slurm_gpus_per_node", 0))
    return int(value or 0)


def run_submitit(jobs: Sequence[SweepJob], executor: Any, at_once: int | None, echo: Echo = lambda m: None,
                 poll_s: float = 1.0) -> list[JobResult]:
    """Submit each command as a submitit job (``helpers.CommandFunction``) and wait for all of them.

    On SLURM every job goes in at once, as one job array (``at_once`` becomes
    ``slurm_array_parallelism``); with submitit's local executor at most
    ``at_once`` (default 1) run together. Ctrl-C stops waiting: local jobs are
    cancelled, SLURM jobs keep running (``submitted`` in the summary; run the
    sweep again later, finished cells are skipped).
    """
    from submitit.helpers import CommandFunction

    cluster = getattr(executor, "cluster", "slurm")
    window = len(jobs) if cluster != "local" else (at_once or 1)
    if cluster != "local" and at_once:
        executor.update_parameters(slurm_array_parallelism=int(at_once))
    pending = list(jobs)
    running: dict[int, tuple[SweepJob, Any, float]] = {}
    results: list[JobResult] = []

    def submit(batch: list[SweepJob]) -> None:
        functions = [CommandFunction(job.command, verbose=True, cwd=os.getcwd()) for job in batch]
        try:
            if len(batch) > 1:
                with executor.batch():
                    handles = [executor.submit(function) for function in functions]
            else:
                handles = [executor.submit(functions[0])]
        except Exception as exc:  # noqa: BLE001 - sbatch missing, rejected by the scheduler...
            message = last_line(str(exc)) or type(exc).__name__
            raise SweepError(f"cannot submit to {cluster}: {message}") from None
        for job, handle in zip(batch, handles):
            running[job.index] = (job, handle, time.perf_counter())
            echo(f"submitted {job.method} on {job.dataset}, seed {job.seed}: job {handle.job_id}")

    try:
        while pending or running:
            room = window - len(running)
            if pending and room > 0:
                batch, pending = pending[:room], pending[room:]
                submit(batch)
            for index, (job, handle, started) in list(running.items()):
                if not handle.done():
                    continue
                del running[index]
                result = _submitit_result(job, handle, time.perf_counter() - started)
                results.append(result)
                _progress(echo, len(results), len(jobs), result)
            if pending or running:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        for job, handle, _ in running.values():
            if cluster == "local":
                handle.cancel(check=False)
                results.append(JobResult(job, "interrupted", error="cancelled", log=str(handle.paths.folder)))
            else:
                results.append(JobResult(job, "submitted", error=f"job {handle.job_id} still queued or running",
                                         log=str(handle.paths.folder)))
        results += [JobResult(job, "not run") for job in pending]
    return results


def _submitit_result(job: SweepJob, handle: Any, seconds: float) -> JobResult:
    from submitit.core.utils import FailedJobError, UncompletedJobError

    log = str(handle.paths.stderr)
    try:
        stdout = handle.result()
    except FailedJobError as exc:  # the command failed: its stderr is inside submitit's message
        code, stderr = unwrap_failure(str(exc))
        return job_result(job, code, "", stderr, seconds, log=log)
    except UncompletedJobError as exc:  # killed, timed out, cancelled
        return JobResult(job, "failed", seconds=seconds, error=last_line(str(exc).splitlines()[0]), log=log)
    except Exception as exc:  # noqa: BLE001 - anything else the job raised
        return JobResult(job, "failed", seconds=seconds, error=last_line(str(exc)) or type(exc).__name__, log=log)
    return job_result(job, 0, stdout or "", "", seconds, log=log)


_MARK = "FailedJobError: "
_EXIT = re.compile(r"returned non-zero exit status (-?\d+)|died with <Signals\.\w+: (\d+)>")


def unwrap_failure(text: str) -> tuple[int, str]:
    """(exit code, the command's stderr) from submitit's message for a failed ``CommandFunction`` job.

    submitit re-raises ``FailedJobError(stderr)`` inside a trace that also
    names the ``CalledProcessError`` with the exit code; a message of another
    shape is returned whole with exit code 1.
    """
    match = _EXIT.search(text)
    code = (int(match[1]) if match[1] is not None else -int(match[2])) if match else 1
    at = text.rfind(_MARK)
    if at < 0:
        return code, text
    stderr = text[at + len(_MARK):]
    end = stderr.find("\n----------------------")
    return code, (stderr[:end] if end >= 0 else stderr).rstrip()


__all__ = ["AUTO_PARAMETERS", "check_parameters", "gpus_per_node", "make_executor", "run_local", "run_submitit",
           "slurm_parameters", "unwrap_failure"]
