"""The plugin docs stay in step with the code, in the style of datasette's tests/test_docs.py.

Every hookspec in segbench/hookspecs.py has a docstring and a ``## name``
section in docs/hooks.md whose signature matches; every ``##`` section there
names a real hook; docs/plugins.md covers every MethodSpec field, prediction
key and recipe name; code blocks parse and relative links resolve.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
from pathlib import Path

import pytest

from segbench import hookspecs
from segbench.specs import PREDICTION_KEYS, RECIPE_NAMES, TARGET_KEYS, MethodSpec

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
HOOKS_MD = DOCS / "hooks.md"
PLUGINS_MD = DOCS / "plugins.md"

HOOKSPECS = {
    name: function
    for name, function in vars(hookspecs).items()
    if inspect.isfunction(function) and hasattr(function, "segbench_spec")
}
HOOK_NAMES = sorted(HOOKSPECS)


def sections(path: Path) -> dict[str, str]:
    """``## heading`` -> the text up to the next ``## `` heading."""
    parts = re.split(r"^## +(.+?)\s*$", path.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.M | re.S)


def test_hookspecs_are_found():
    # the hooks the architecture promises plugin authors; more may be added
    assert {"register_methods", "register_datasets", "register_metrics", "register_commands",
            "run_started", "run_finished"} <= set(HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hookspec_has_a_docstring(hook):
    doc = inspect.getdoc(HOOKSPECS[hook])
    assert doc and doc.strip(), f"hookspec {hook} in segbench/hookspecs.py has no docstring"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hook_is_documented(hook):
    assert hook in sections(HOOKS_MD), f"docs/hooks.md has no '## {hook}' section"


def test_documented_hooks_exist():
    unknown = sorted(set(sections(HOOKS_MD)) - set(HOOK_NAMES))
    assert not unknown, f"docs/hooks.md documents hooks that segbench/hookspecs.py lacks: {unknown}"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_documented_signature_matches_the_hookspec(hook):
    section = sections(HOOKS_MD).get(hook)
    if section is None:
        pytest.fail(f"docs/hooks.md has no '## {hook}' section")
    blocks = code_blocks(section, "python")
    assert blocks, f"docs/hooks.md '## {hook}' starts with no python signature block"
    signature = ast.parse(blocks[0]).body[0]
    assert isinstance(signature, ast.FunctionDef) and signature.name == hook, (
        f"the first code block of '## {hook}' must be 'def {hook}(...) -> ...: ...'"
    )
    documented = [arg.arg for arg in signature.args.args]
    actual = list(inspect.signature(HOOKSPECS[hook]).parameters)
    assert documented == actual, f"docs/hooks.md shows {hook}({', '.join(documented)}), the hook takes {actual}"
    assert "**When:**" in section and "**Example" in section


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_hook_example_implements_the_hook(hook):
    blocks = code_blocks(sections(HOOKS_MD).get(hook, ""), "python")[1:]
    implementations = [
        node for block in blocks for node in ast.parse(block).body
        if isinstance(node, ast.FunctionDef) and node.name == hook
        and any(ast.unparse(d) == "hookimpl" for d in node.decorator_list)
    ]
    assert implementations, f"docs/hooks.md '## {hook}' has no '@hookimpl def {hook}(...)' example"
    allowed = set(inspect.signature(HOOKSPECS[hook]).parameters)
    for node in implementations:  # pluggy rejects an argument the hook does not pass
        assert {arg.arg for arg in node.args.args} <= allowed


@pytest.mark.parametrize("path", [HOOKS_MD, PLUGINS_MD], ids=lambda p: p.name)
def test_code_blocks_parse(path):
    text = path.read_text()
    python = code_blocks(text, "python")
    assert python
    for block in python:
        ast.parse(block)
    tomllib = pytest.importorskip("tomllib")
    for block in code_blocks(text, "toml"):
        tomllib.loads(block)


@pytest.mark.parametrize("path", [HOOKS_MD, PLUGINS_MD, ROOT / "examples" / "segbench-echo" / "README.md"],
                         ids=lambda p: p.parent.name + "/" + p.name)
def test_relative_links_resolve(path):
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    missing = [link for link in links if "://" not in link and not (path.parent / link).exists()]
    assert not missing, f"{path.relative_to(ROOT)} links to missing files: {missing}"


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(MethodSpec)])
def test_plugins_md_documents_every_methodspec_field(name):
    assert re.search(rf"^\| `{name}` \|", PLUGINS_MD.read_text(), flags=re.M), (
        f"docs/plugins.md's MethodSpec table has no row for field '{name}'"
    )


@pytest.mark.parametrize("key", PREDICTION_KEYS + TARGET_KEYS)
def test_plugins_md_documents_every_prediction_and_target_key(key):
    assert re.search(rf"^\| `{key}` \|", PLUGINS_MD.read_text(), flags=re.M), (
        f"docs/plugins.md has no table row for key '{key}'"
    )


def test_plugins_md_covers_recipes_strict_mode_and_the_template():
    text = PLUGINS_MD.read_text()
    for recipe in RECIPE_NAMES:
        assert f"`{recipe}`" in text
    for needle in ("SEGBENCH_STRICT_PLUGINS=1", "segbench list plugins", "segbench check",
                   "PluginError", "[project.entry-points.segbench]", "examples/segbench-echo"):
        assert needle in text, f"docs/plugins.md does not mention {needle}"
