"""Run the ``segbench`` command line in-process from a test, as a user would type it."""

from __future__ import annotations

from typing import Any


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """``segbench ARGS...`` in this process; returns (exit code, stdout, stderr). ``capsys`` is pytest's fixture."""
    from segbench.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err
