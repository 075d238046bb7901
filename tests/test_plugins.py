"""The plugin registry (segbench/plugins.py) and the example plugin examples/segbench-echo.

Every test builds a fresh ``Registry`` without built-ins or entry points and
adds plugins in-process (``register_plugin``), or fakes the entry-point group;
the process-wide registry is never touched.
"""

from __future__ import annotations

import importlib
import math
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

import segbench.plugins
from segbench import DatasetSpec, MethodSpec, Recipe, hookimpl
from segbench.errors import ConfigError, PluginError, SegbenchError, UnknownNameError
from segbench.plugins import ENTRY_POINT_GROUP, Registry, unknown_name_message

TESTS_DIR = Path(__file__).resolve().parent
ECHO_DIR = TESTS_DIR.parent / "examples" / "segbench-echo"


# -- helpers -------------------------------------------------------------------
def _never_built(num_classes: int, **options):
    raise AssertionError("tests never build this method")


def method_spec(name: str, **fields) -> MethodSpec:
    fields = {"build": _never_built, "supervision": "image", "outputs": {"scores"}, **fields}
    return MethodSpec(name=name, **fields)


def plugin(**hooks) -> SimpleNamespace:
    """An in-process plugin object whose attributes are hook implementations."""
    return SimpleNamespace(**{name: hookimpl(function) for name, function in hooks.items()})


def methods_plugin(*specs: MethodSpec) -> SimpleNamespace:
    def register_methods(register):
        for spec in specs:
            register(spec)

    return plugin(register_methods=register_methods)


def fresh() -> Registry:
    return Registry().load(builtin=(), entry_points=False)


def fake_entry_points(monkeypatch, *pairs: tuple[str, str]) -> None:
    """Make ``importlib.metadata.entry_points`` (as segbench.plugins uses it) return ``pairs``."""
    eps = [metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP) for name, value in pairs]

    def entry_points(group=None, **_):
        return [ep for ep in eps if ep.group == group]

    monkeypatch.setattr(segbench.plugins.metadata, "entry_points", entry_points)
    monkeypatch.syspath_prepend(str(ECHO_DIR))
    monkeypatch.syspath_prepend(str(TESTS_DIR))


@pytest.fixture(autouse=True)
def _not_strict(monkeypatch):
    monkeypatch.delenv("SEGBENCH_STRICT_PLUGINS", raising=False)


@pytest.fixture
def echo(monkeypatch):
    """The example plugin module ``segbench_echo``, importable from examples/segbench-echo."""
    monkeypatch.syspath_prepend(str(ECHO_DIR))
    return importlib.import_module("segbench_echo")


# -- a plugin registering a method is listed --------------------------------------
def test_plugin_method_is_listed(echo):
    registry = fresh()
    registry.register_plugin(echo, "echo")
    assert sorted(registry.methods) == ["echo"]
    spec = registry.method("echo")
    assert spec.plugin == "echo"
    assert spec.supervision == "image"
    assert spec.outputs == {"scores", "score_maps"}
    assert set(spec.recipes) == {"quick", "bench", "paper"}
    info = registry.plugins["echo"]
    assert info.ok and info.error == ""
    assert info.module == "segbench_echo"
    assert info.registered == ["method:echo"]
    assert registry.broken() == []


def test_entry_point_plugin_is_loaded_with_its_name(monkeypatch):
    fake_entry_points(monkeypatch, ("echo", "segbench_echo"))
    registry = Registry().load(builtin=())
    assert registry.method("echo").plugin == "echo"
    assert registry.plugins["echo"].module == "segbench_echo"
    assert registry.plugins["echo"].ok


# -- a broken plugin is reported and breaks nothing else ----------------------------
def test_registration_error_is_reported_and_others_still_load(echo):
    def register_methods(register):
        register(method_spec("half_done"))
        raise RuntimeError("cannot find my config file")

    registry = fresh()
    registry.register_plugin(plugin(register_methods=register_methods), "explodes")
    registry.register_plugin(echo, "echo")
    assert [p.name for p in registry.broken()] == ["explodes"]
    assert registry.plugins["explodes"].error == "RuntimeError: cannot find my config file"
    assert "half_done" not in registry.methods  # nothing from a failed registration is kept
    assert sorted(registry.methods) == ["echo"]
    assert registry.plugins["echo"].ok


def test_hookimpl_with_wrong_argument_name_is_broken(echo):
    def register_methods(reg):  # the hook's argument is called ``register``
        reg(method_spec("never"))

    registry = fresh()
    registry.register_plugin(plugin(register_methods=register_methods), "typo")
    registry.register_plugin(echo, "echo")
    error = registry.plugins["typo"].error
    assert error.startswith("PluginValidationError")
    assert "reg" in error
    assert sorted(registry.methods) == ["echo"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("segbench_no_such_module_xyz", "ModuleNotFoundError: No module named 'segbench_no_such_module_xyz'"),
        ("plugins_fixtures.broken_import", "ImportError: segbench-broken needs the package 'not_installed_anywhere'"),
        ("segbench_echo:no_such_attribute", "AttributeError"),
    ],
)
def test_plugin_whose_import_fails_is_broken_and_the_rest_works(monkeypatch, value, expected):
    fake_entry_points(monkeypatch, ("aaa_broken", value), ("echo", "segbench_echo"))
    registry = Registry().load(builtin=())
    broken = registry.broken()
    assert [p.name for p in broken] == ["aaa_broken"]
    assert broken[0].module == value
    assert broken[0].error.startswith(expected)
    assert sorted(registry.methods) == ["echo"]
    assert registry.plugins["echo"].ok


def test_two_entry_points_with_one_name_second_is_broken(monkeypatch):
    fake_entry_points(monkeypatch, ("echo", "segbench_echo"), ("echo", "plugins_fixtures.copycat"))
    registry = Registry().load(builtin=())
    assert registry.plugins["echo"].ok
    taken = registry.plugins["echo (plugins_fixtures.copycat)"]
    assert taken.error == "plugin name 'echo' is taken by segbench_echo"
    assert sorted(registry.methods) == ["echo"]
    assert registry.method("echo").plugin == "echo"


# -- SEGBENCH_STRICT_PLUGINS=1 re-raises -------------------------------------------
def test_strict_mode_reraises_registration_error(monkeypatch):
    def register_methods(register):
        raise RuntimeError("boom")

    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    registry = fresh()
    with pytest.raises(PluginError, match=r"^plugin 'explodes' failed to register methods: boom$") as info:
        registry.register_plugin(plugin(register_methods=register_methods), "explodes")
    assert isinstance(info.value, SegbenchError)
    assert isinstance(info.value.__cause__, RuntimeError)


def test_strict_mode_reraises_import_error(monkeypatch):
    fake_entry_points(monkeypatch, ("missing", "segbench_no_such_module_xyz"))
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match=r"^plugin 'missing' failed to load: ModuleNotFoundError"):
        Registry().load(builtin=())


@pytest.mark.parametrize("value", ["", "0", "false"])
def test_strict_mode_off_values(monkeypatch, value):
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", value)
    fake_entry_points(monkeypatch, ("missing", "segbench_no_such_module_xyz"))
    registry = Registry().load(builtin=())
    assert [p.name for p in registry.broken()] == ["missing"]


# -- duplicate names ---------------------------------------------------------------
def test_duplicate_method_name_names_both_plugins(echo):
    registry = fresh()
    registry.register_plugin(echo, "echo")
    registry.register_plugin(methods_plugin(method_spec("mine"), method_spec("echo")), "copycat")
    assert registry.plugins["copycat"].error == (
        "ValueError: method 'echo' is registered by both plugin 'echo' and plugin 'copycat'"
    )
    assert registry.method("echo").plugin == "echo"  # the first one keeps the name
    assert "mine" not in registry.methods  # the clashing plugin registers nothing
    assert registry.plugins["echo"].ok


def test_duplicate_within_one_plugin_is_an_error():
    registry = fresh()
    registry.register_plugin(methods_plugin(method_spec("twice"), method_spec("twice")), "doubler")
    assert "method 'twice' is registered by both" in registry.plugins["doubler"].error
    assert registry.methods == {}


def test_duplicate_in_strict_mode_raises_naming_both(monkeypatch, echo):
    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    registry = fresh()
    registry.register_plugin(echo, "echo")
    with pytest.raises(PluginError) as info:
        registry.register_plugin(methods_plugin(method_spec("echo")), "copycat")
    message = str(info.value)
    assert message.startswith("plugin 'copycat' failed to register methods:")
    assert "plugin 'echo'" in message


def test_duplicate_dataset_name_names_both_plugins():
    def datasets_plugin():
        def register_datasets(register):
            register(DatasetSpec(name="tiles", build=_never_built, classes=("background", "tile"),
                                 splits=("train", "val"), annotations={"mask"}))

        return plugin(register_datasets=register_datasets)

    registry = fresh()
    registry.register_plugin(datasets_plugin(), "first")
    registry.register_plugin(datasets_plugin(), "second")
    assert registry.plugins["second"].error == (
        "ValueError: dataset 'tiles' is registered by both plugin 'first' and plugin 'second'"
    )
    assert registry.dataset("tiles").plugin == "first"


def test_builtin_keeps_its_name_when_an_entry_point_duplicates_it(monkeypatch):
    fake_entry_points(monkeypatch, ("copycat", "plugins_fixtures.copycat"))
    monkeypatch.syspath_prepend(str(ECHO_DIR))
    registry = Registry().load(builtin=("segbench_echo",))
    assert registry.plugins["segbench_echo"].ok
    assert registry.method("echo").plugin == "segbench_echo"
    assert "plugin 'segbench_echo' and plugin 'copycat'" in registry.plugins["copycat"].error


# -- malformed specs -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (method_spec("bad", supervision="pixels"),
         "method 'bad': supervision must be one of ['image', 'instance', 'pixel'], got 'pixels'"),
        (method_spec("bad", outputs=set()), "method 'bad': outputs must be a non-empty subset of"),
        (method_spec("bad", outputs={"scores", "heatmap"}), "got ['heatmap', 'scores']"),
        (method_spec("bad", options={"depth": 2}, recipes=[Recipe("quick", model={"width": 3})]),
         "method 'bad': recipe 'quick' sets unknown option(s) ['width']; options are ['depth']"),
        (method_spec("bad", build="not callable"), "method 'bad': build must be callable"),
        (method_spec("two words"), "method name must be a non-empty identifier, got 'two words'"),
        (DatasetSpec(name="bad", build=_never_built, classes=("a",), splits=("train", "val"), annotations=()),
         "register_methods expects MethodSpec, got DatasetSpec"),
    ],
    ids=["supervision", "empty-outputs", "unknown-output", "recipe-option", "build", "name", "wrong-type"],
)
def test_malformed_spec_is_rejected_naming_the_plugin(monkeypatch, spec, message):
    registry = fresh()
    registry.register_plugin(methods_plugin(method_spec("fine"), spec), "sloppy")
    error = registry.plugins["sloppy"].error
    assert error.startswith("ValueError: ") and message in error
    assert registry.methods == {}  # the valid spec of the same plugin is not kept either
    assert [p.name for p in registry.broken()] == ["sloppy"]

    monkeypatch.setenv("SEGBENCH_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError) as info:
        fresh().register_plugin(methods_plugin(spec), "sloppy")
    assert str(info.value).startswith("plugin 'sloppy' failed to register methods: ")
    assert message in str(info.value)


# -- unknown names -------------------------------------------------------------------
def test_unknown_method_suggests_the_closest_name():
    registry = fresh()
    registry.register_plugin(methods_plugin(*(method_spec(n) for n in ("weldon", "echo", "fcn"))), "zoo")
    with pytest.raises(UnknownNameError) as info:
        registry.method("weldn")
    assert str(info.value) == "unknown method 'weldn'; did you mean 'weldon'?"
    assert isinstance(info.value, KeyError) and isinstance(info.value, SegbenchError)


def test_unknown_name_lists_several_close_names_best_first():
    message = unknown_name_message("method", "weldn", {"wildcat": 1, "weldon": 2, "fcn": 3})
    assert message == "unknown method 'weldn'; did you mean 'weldon', 'wildcat'?"


def test_unknown_name_without_close_match_lists_known_names():
    registry = fresh()
    registry.register_plugin(methods_plugin(method_spec("weldon"), method_spec("echo")), "zoo")
    with pytest.raises(UnknownNameError, match=r"^unknown method 'zzz'; known: echo, weldon$"):
        registry.method("zzz")
    with pytest.raises(UnknownNameError, match=r"^unknown dataset 'voc'; known: none$"):
        registry.dataset("voc")
    with pytest.raises(UnknownNameError, match=r"^unknown metric 'miou'; known: none$"):
        registry.metric("miou")


# -- a plugin that fails part-way keeps nothing; plugin names are unique -------------------
def test_plugin_broken_in_a_later_hook_keeps_nothing():
    def register_datasets(register):
        raise RuntimeError("no datasets today")

    def register_methods(register):
        register(method_spec("orphan"))

    registry = fresh()
    registry.register_plugin(plugin(register_methods=register_methods, register_datasets=register_datasets), "half")
    assert registry.plugins["half"].error == "RuntimeError: no datasets today"
    assert "orphan" not in registry.methods


def test_registering_a_taken_plugin_name_does_not_break_the_first(echo):
    registry = fresh()
    registry.register_plugin(echo, "echo")
    try:  # refusing at once or recording the newcomer as broken are both fine
        registry.register_plugin(methods_plugin(method_spec("other")), "echo")
    except (ValueError, PluginError) as exc:
        assert "'echo'" in str(exc)
    assert registry.plugins["echo"].ok
    assert sorted(registry.methods) == ["echo"]


# -- the example plugin works as a method (it is the template and the test double) ----------
def test_echo_pyproject_declares_the_entry_point():
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ECHO_DIR / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["segbench"] == {"echo": "segbench_echo"}
    assert "segbench" in " ".join(project["dependencies"])


def test_echo_import_does_not_import_torch():
    code = "import sys, segbench_echo; sys.exit('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ECHO_DIR), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], env=env).returncode == 0


@pytest.fixture
def echo_spec(echo) -> MethodSpec:
    registry = fresh()
    registry.register_plugin(echo, "echo")
    return registry.method("echo")


def test_echo_loss_is_bce_on_the_global_max(echo_spec):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = echo_spec.build(4, **echo_spec.options)
    images = torch.randn(2, 3, 32, 48)
    labels = torch.tensor([[0.0, 1, 0, 1], [0.0, 0, 1, 0]])
    losses = model.loss(images, [{"labels": labels[0]}, {"labels": labels[1]}])
    assert set(losses) == {"bce"}
    loss = losses["bce"]
    assert loss.ndim == 0 and loss.requires_grad and torch.isfinite(loss)
    scores = model(images).amax(dim=(-2, -1)).detach()
    p = 1 / (1 + torch.exp(-scores.double()))
    by_hand = -(labels * torch.log(p) + (1 - labels) * torch.log(1 - p)).mean()
    assert math.isclose(loss.item(), by_hand.item(), rel_tol=1e-5)
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0


def test_echo_leaves_ignored_classes_out_of_the_loss(echo_spec):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = echo_spec.build(3, downsample=4)
    images = torch.randn(1, 3, 16, 16)
    ignore = torch.tensor([False, False, True])
    as_positive = model.loss(images, [{"labels": torch.tensor([0.0, 1, 1]), "labels_ignore": ignore}])["bce"]
    as_negative = model.loss(images, [{"labels": torch.tensor([0.0, 1, 0]), "labels_ignore": ignore}])["bce"]
    counted = model.loss(images, [{"labels": torch.tensor([0.0, 1, 0])}])["bce"]
    assert as_positive.item() == pytest.approx(as_negative.item())
    assert counted.item() != pytest.approx(as_positive.item())


@pytest.mark.parametrize(("size", "downsample", "map_size"), [((32, 48), 8, (4, 6)), ((5, 7), 8, (1, 1))])
def test_echo_predictions_have_the_declared_keys_and_shapes(echo_spec, size, downsample, map_size):
    torch = pytest.importorskip("torch")
    model = echo_spec.build(5, downsample=downsample).eval()
    predictions = model.predict(torch.randn(3, 3, *size))
    assert len(predictions) == 3
    for prediction in predictions:
        assert set(prediction) == echo_spec.outputs
        assert prediction["scores"].shape == (5,)
        assert prediction["score_maps"].shape == (5, *map_size)
        assert prediction["score_maps"].dtype == torch.float32
        assert not prediction["scores"].requires_grad
        assert torch.equal(prediction["scores"], prediction["score_maps"].amax(dim=(-2, -1)))


def test_echo_rejects_a_bad_downsample(echo_spec):
    pytest.importorskip("torch")
    with pytest.raises(ConfigError, match=r"method 'echo': downsample must be a positive integer, got 0"):
        echo_spec.build(3, downsample=0)


def test_echo_learns_colours(echo_spec):
    """On squares whose colour is their class, a few SGD steps drive the loss down."""
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(0)
    colours = torch.tensor([[0.9, -0.9, -0.9], [-0.9, 0.9, -0.9], [-0.9, -0.9, 0.9]])

    def batch(n: int = 8):
        images = torch.zeros(n, 3, 32, 32)
        targets = []
        for i in range(n):
            labels = torch.zeros(4)
            for left, c in zip((0, 16), torch.randint(0, 3, (2,), generator=generator).tolist()):
                y = int(torch.randint(0, 17, (1,), generator=generator))
                images[i, :, y:y + 16, left:left + 16] = colours[c, :, None, None]
                labels[c + 1] = 1
            targets.append({"labels": labels})
        return images, targets

    torch.manual_seed(0)
    model = echo_spec.build(4, **echo_spec.options)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    losses = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest on a busy machine
    try:
        for _ in range(60):
            loss = sum(model.loss(*batch()).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        torch.set_num_threads(threads)
    assert sum(losses[-5:]) / 5 < 0.3 * losses[0]
    images, targets = batch(32)
    for prediction, target in zip(model.eval().predict(images), targets):
        present = target["labels"].bool()  # every present class outranks every absent one
        assert prediction["scores"][present].min() > prediction["scores"][~present].max()


def test_echo_recipes_resolve_to_valid_configs(echo_spec):
    from segbench.engine.config import resolve_config

    dataset = DatasetSpec(name="tiny", build=_never_built, classes=("background", "a", "b"),
                          splits=("train", "val"), annotations=(), needs_root=False)
    steps = {}
    for name in ("quick", "bench", "paper"):
        config = resolve_config(echo_spec, dataset, {}, recipe=name)
        steps[name] = config.train.steps
        assert set(config.model) == set(echo_spec.options)
    assert steps["quick"] < steps["bench"] < steps["paper"]
    assert resolve_config(echo_spec, dataset, {}, recipe="paper").model == {"downsample": 4}
    assert resolve_config(echo_spec, dataset, {}, "quick", {"downsample": 2}).model == {"downsample": 2}


def test_misspelled_hook_marks_the_plugin_broken_with_a_hint():
    def register_method(register):  # missing "s"
        register(method_spec("lost"))

    registry = fresh()
    registry.register_plugin(plugin(register_method=register_method), "typo")
    assert registry.plugins["typo"].error == "ValueError: unknown hook 'register_method'; did you mean 'register_methods'?"
    assert "lost" not in registry.methods
