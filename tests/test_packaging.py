"""What a user installs: the licence, the optional extras and their messages, one version, the plugins' hooks."""

from __future__ import annotations

import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

import segbench
from segbench.testing.cli import run_cli

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_license_file_matches_pyproject():
    assert PYPROJECT["project"]["license"] == "MIT"
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License\n")
    assert "WITHOUT WARRANTY OF ANY KIND" in text


def test_extras_name_the_optional_libraries():
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [d.split(">")[0] for d in extras["slurm"]] == ["submitit"]
    assert [d.split(">")[0] for d in extras["crf"]] == ["pydensecrf2"]


def test_version_is_the_installed_distributions():
    assert segbench.__version__ == metadata.version("segbench") == PYPROJECT["project"]["version"]


def test_missing_submitit_names_the_extra(monkeypatch, tmp_path):
    from segbench.sweep import SweepError
    from segbench.sweep_launchers import make_executor

    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(SweepError, match=r"^the slurm and submitit-local launchers need submitit, the extra "
                                         r"segbench\[slurm\]: pip install 'segbench\[slurm\]' \(or pip install "
                                         r"submitit\)$"):
        make_executor("local", tmp_path, {})


def test_list_plugins_shows_each_plugins_hooks_and_specs(capsys):
    code, out, _ = run_cli(capsys, "list", "plugins")
    assert code == 0
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("weldon "))
    assert lines[at + 1].strip() == "hooks: register_methods"
    assert lines[at + 2].strip() == "registers: method:weldon"
    at = next(i for i, line in enumerate(lines) if line.strip().startswith("segbench.metrics.builtin"))
    assert lines[at + 1].strip() == "hooks: register_metrics"
