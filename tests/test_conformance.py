"""The registry drives the suite (as in timm's tests): every registered method passes the conformance kit."""

from segbench import list_methods
from segbench.testing import parametrize_with_checks


@parametrize_with_checks(list_methods())
def test_every_registered_method_conforms(method, check):
    check(method)


def test_check_command_reports_pass_and_fail(capsys):
    from segbench.cli import main

    try:
        main(["check", "weldon"])
    except SystemExit as exc:  # pragma: no cover - a failing check exits 1
        assert exc.code == 0
    out = capsys.readouterr().out
    assert "PASS  check_outputs" in out and "weldon: all checks passed" in out
    try:
        main(["check", "weldon", "--set", "no_such_option=1"])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr().out
    assert code == 1 and "FAIL  check_outputs" in out
