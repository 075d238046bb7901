"""Conformance kit for plugin authors, in the spirit of scikit-learn's ``check_estimator``.

``segbench check METHOD`` runs every check; in pytest::

    from segbench.testing import parametrize_with_checks

    @parametrize_with_checks(["mymethod"])
    def test_conformance(method, check):
        check(method)
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from segbench.testing.checks import ALL_CHECKS, CheckContext


def run_checks(method: str, **options: Any) -> Iterator[tuple[str, str | None]]:
    """Yield ``(check name, None)`` for each passing check and ``(name, message)`` for each failing one."""
    context = CheckContext(method, options)
    for check in ALL_CHECKS:
        try:
            check(context)
        except AssertionError as exc:
            yield check.__name__, str(exc) or "assertion failed"
        except Exception as exc:  # noqa: BLE001 - a crash is a failed check, reported with its type
            yield check.__name__, f"{type(exc).__name__}: {exc}"
        else:
            yield check.__name__, None


def check_method(method: str, **options: Any) -> None:
    """Run every check and raise ``AssertionError`` listing the failures."""
    failures = [f"{name}: {error}" for name, error in run_checks(method, **options) if error]
    if failures:
        raise AssertionError(f"method '{method}' fails {len(failures)} check(s):\n" + "\n".join(failures))


def parametrize_with_checks(methods: list[str], **options: Any) -> Callable:
    """A ``pytest.mark.parametrize`` over (method, check) pairs; each check is ``check(method)``."""
    import pytest

    contexts: dict[str, CheckContext] = {}

    def bind(check):
        def run(method: str) -> None:
            context = contexts.setdefault(method, CheckContext(method, options))
            check(context)

        run.__name__ = check.__name__
        return run

    params = [pytest.param(m, bind(c), id=f"{m}-{c.__name__}") for m in methods for c in ALL_CHECKS]
    return pytest.mark.parametrize("method, check", params)


__all__ = ["check_method", "parametrize_with_checks", "run_checks"]
