"""Data checks: what is wrong with a dataset on disk, one line per problem.

Every on-disk dataset (``segbench.data.files.FileDataset``) has ``check(full)``
returning a list of :class:`Problem`. The cheap walk (``full=False``: file
existence, XML / JSON parsing, image and mask sizes read from the file headers
without decoding pixels) runs before every ``segbench run`` through
:func:`validate`; the full walk (``full=True``: every image and mask decoded,
mask values checked) is ``segbench data check``.

Levels: an ``error`` stops a run (or, with the dataset option ``skip_bad``,
drops the sample); a ``warning`` (a split whose size differs from the
official release, an XML ``<size>`` that disagrees with the JPEG) is printed
but blocks nothing unless the dataset option ``strict`` (``--strict`` for
``data check``) turns warnings into errors.

This module imports no torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from segbench.errors import DataError

__all__ = ["CheckReport", "Problem", "check_dataset", "format_problems", "validate"]

ERROR, WARNING = "error", "warning"
SHOWN = 3
"""Problems quoted in the message of :func:`validate`."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong: ``path: message``; ``index`` is the sample it makes unusable (None: the whole split)."""

    level: str
    path: str
    message: str
    index: int | None = None

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def line(self) -> str:
        """The line ``data check`` prints: ``error: path: message`` or ``warning: ...``."""
        return f"{self.level}: {self}"


def error(path: Any, message: str, index: int | None = None) -> Problem:
    """An error-level :class:`Problem`."""
    return Problem(ERROR, os.fspath(path), message, index)


def warning(path: Any, message: str, index: int | None = None) -> Problem:
    """A warning-level :class:`Problem`."""
    return Problem(WARNING, os.fspath(path), message, index)


def blocking(problems: Iterable[Problem], strict: bool = False) -> list[Problem]:
    """The problems that stop a run: errors, and warnings too when ``strict``."""
    return [p for p in problems if p.level == ERROR or strict]


def format_problems(name: str, split: str, problems: Sequence[Problem], hint: str = "") -> str:
    """One line: the count, the first few problems, and what to do."""
    shown = "; ".join(str(p) for p in problems[:SHOWN])
    more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ""
    count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
    return f"dataset '{name}' split '{split}': {count} in the data: {shown}{more}{hint}"


def validate(dataset: Any) -> list[Problem]:
    """The cheap checks, before a run: raise :class:`DataError` on a blocking problem, else return the warnings.

    Datasets without ``check`` (``shapes``) pass. With the dataset option
    ``skip_bad`` the bad samples were already dropped when the dataset was
    built (``dataset.skipped`` counts them); what is left to block is a
    problem of the whole split. ``strict`` (a dataset option) makes warnings
    block too.
    """
    check = getattr(dataset, "check", None)
    if check is None:
        return []
    problems = check(full=False)
    bad = blocking(problems, getattr(dataset, "strict", False))
    if bad:
        name, split = getattr(dataset, "name", "?"), getattr(dataset, "split", "?")
        root = getattr(dataset, "root", None)
        where = f" --root {root}" if root is not None else ""
        skip = "" if getattr(dataset, "skip_bad", False) else ", or --set skip_bad=true to skip bad samples"
        hint = f"; run 'segbench data check {name}{where} --split {split}' to list them{skip}"
        raise DataError(format_problems(name, split, bad, hint))
    return problems


@dataclass
class CheckReport:
    """What ``segbench data check`` prints: every problem once, and per split a summary."""

    problems: list[Problem] = field(default_factory=list)
    summaries: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == ERROR]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.level == WARNING]

    def add(self, problems: Iterable[Problem]) -> None:
        seen = {(p.level, p.path, p.message) for p in self.problems}
        for p in problems:
            if (p.level, p.path, p.message) not in seen:
                seen.add((p.level, p.path, p.message))
                self.problems.append(p)

    def clean(self, strict: bool = False) -> bool:
        return not blocking(self.problems, strict)


def check_dataset(name: str, root: Any = None, split: str | None = None, *, full: bool = True,
                  options: Mapping[str, Any] | None = None) -> CheckReport:
    """Walk dataset ``name`` (every split, or ``split``) and collect its problems.

    A split that cannot be built is an error when it was asked for; without
    ``split``, a split whose list or source is absent (e.g. ``trainaug``
    without SBD) is a warning, unless no split can be built at all.
    """
    from segbench.api import create_dataset
    from segbench.plugins import get_registry

    spec = get_registry().dataset(name)
    options = dict(options or {})
    splits = [split] if split else list(spec.splits)
    report = CheckReport()
    built = 0
    failures: list[tuple[str, DataError]] = []
    for name_of_split in splits:
        try:
            dataset = create_dataset(name, name_of_split, root=root, **options)
        except DataError as exc:
            failures.append((name_of_split, exc))
            continue
        built += 1
        check = getattr(dataset, "check", None)
        problems = check(full=full) if check is not None else []
        report.add(problems)
        n_err = sum(p.level == ERROR for p in problems)
        n_warn = len(problems) - n_err
        what = "nothing to check (generated)" if check is None else f"{n_err} error(s), {n_warn} warning(s)"
        report.summaries.append(f"{name} {name_of_split}: {len(dataset)} images, {what}")
    for name_of_split, exc in failures:
        level = ERROR if split or not built else WARNING
        text = str(exc) if split or not built else f"split '{name_of_split}' not available: {exc}"
        report.add([Problem(level, name, text)] if level == WARNING else [_as_problem(exc)])
    return report


def _as_problem(exc: DataError) -> Problem:
    """A build error (``path: message``) as a problem, split at the first ': ' when it names a path."""
    text = str(exc)
    head, sep, tail = text.partition(": ")
    if sep and (os.sep in head or head.endswith((".json", ".xml", ".txt"))):
        return Problem(ERROR, head, tail)
    return Problem(ERROR, "", text)
