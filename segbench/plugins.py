"""Plugin manager: built-in plugins and the ``segbench`` entry-point group.

Built-ins (datasets, metrics) go through the same hooks as external plugins,
as pytest does. Each plugin loads and registers inside its own try/except:
a broken plugin is recorded with its error (``segbench list plugins``) and
breaks nothing else, unless ``SEGBENCH_STRICT_PLUGINS=1``.
"""

from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from segbench import hookspecs
from segbench.errors import PluginError, UnknownNameError
from segbench.specs import DatasetSpec, MethodSpec, MetricSpec, PostprocessorSpec

ENTRY_POINT_GROUP = "segbench"
BUILTIN_PLUGINS = ("segbench.data.builtin", "segbench.metrics.builtin", "segbench.postprocess.builtin")
_KINDS = {"methods": MethodSpec, "datasets": DatasetSpec, "metrics": MetricSpec,
          "postprocessors": PostprocessorSpec}


@dataclass
class PluginInfo:
    """One plugin as loaded: where it came from, its version, and its error if broken."""

    name: str
    module: str
    version: str = ""
    builtin: bool = False
    error: str = ""
    registered: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.error


class Registry:
    """Every method, dataset, metric and post-processor spec, keyed by name, with the plugins that gave them."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("segbench")
        self.pm.add_hookspecs(hookspecs)
        self.methods: dict[str, MethodSpec] = {}
        self.datasets: dict[str, DatasetSpec] = {}
        self.metrics: dict[str, MetricSpec] = {}
        self.postprocessors: dict[str, PostprocessorSpec] = {}
        self.plugins: dict[str, PluginInfo] = {}

    # -- loading -------------------------------------------------------------
    def load(self, builtin: tuple[str, ...] = BUILTIN_PLUGINS, entry_points: bool = True) -> "Registry":
        for module_name in builtin:
            info = PluginInfo(name=module_name, module=module_name, builtin=True)
            self._guard(info, lambda m=module_name: self.pm.register(importlib.import_module(m), name=m))
        if entry_points:
            for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
                info = PluginInfo(name=ep.name, module=ep.value)
                if ep.dist is not None:
                    info.version = ep.dist.version
                if ep.name in self.plugins:
                    info.error = f"plugin name '{ep.name}' is taken by {self.plugins[ep.name].module}"
                    self.plugins[f"{ep.name} ({ep.value})"] = info
                    continue
                self._guard(info, lambda ep=ep: self.pm.register(ep.load(), name=ep.name))
        for kind in _KINDS:
            self._collect(kind)
        return self

    def register_plugin(self, module: Any, name: str) -> None:
        """Register an in-process plugin object (tests, notebooks) and collect its specs."""
        if name in self.plugins:
            raise ValueError(f"plugin name '{name}' is taken by {self.plugins[name].module}")
        info = PluginInfo(name=name, module=getattr(module, "__name__", repr(module)))
        self._guard(info, lambda: self.pm.register(module, name=name))
        if info.error:
            return
        for kind in _KINDS:
            self._collect(kind, only=name)

    def _guard(self, info: PluginInfo, action) -> None:
        self.plugins.setdefault(info.name, info)
        try:
            action()
            self._check_hook_names(info.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the harness
            self._mark_broken(info, exc)
            if _strict():
                raise PluginError(f"plugin '{info.name}' failed to load: {info.error}") from exc

    def _check_hook_names(self, name: str) -> None:
        """A misspelled hook (``register_method``) is an error naming the closest real hook."""
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            return
        for caller in self.pm.get_hookcallers(plugin) or []:
            if not caller.has_spec():
                close = difflib.get_close_matches(caller.name, dir(hookspecs), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else ""
                raise ValueError(f"unknown hook '{caller.name}'{hint}")

    def _mark_broken(self, info: PluginInfo, exc: BaseException) -> None:
        """Record the error, drop whatever the plugin registered, and stop calling its hooks."""
        info.error = f"{type(exc).__name__}: {exc}"
        for entry in info.registered:
            kind, _, spec_name = entry.partition(":")
            getattr(self, kind + "s").pop(spec_name, None)
        info.registered.clear()
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)

    def _collect(self, kind: str, only: str | None = None) -> None:
        hook = getattr(self.pm.hook, f"register_{kind}")
        table: dict[str, Any] = getattr(self, kind)
        plugin_order = list(self.plugins)
        impls = sorted(hook.get_hookimpls(), key=lambda i: _position(plugin_order, i.plugin_name))
        for impl in impls:  # registration order: built-ins keep their names
            plugin_name = impl.plugin_name
            if only is not None and plugin_name != only:
                continue
            info = self.plugins.get(plugin_name) or self.plugins.setdefault(
                plugin_name, PluginInfo(name=plugin_name, module=plugin_name)
            )
            if info.error:
                continue
            staged: list[Any] = []

            def register(spec: Any, _staged=staged, _kind=kind) -> None:
                expected = _KINDS[_kind]
                if not isinstance(spec, expected):
                    raise ValueError(f"register_{_kind} expects {expected.__name__}, got {type(spec).__name__}")
                spec.validate()
                _staged.append(spec)

            try:
                impl.function(register=register)
                names = [s.name for s in staged]
                for spec in staged:
                    clash = table.get(spec.name)
                    if clash is not None or names.count(spec.name) > 1:
                        other = clash.plugin if clash is not None else plugin_name
                        raise ValueError(
                            f"{kind[:-1]} '{spec.name}' is registered by both plugin "
                            f"'{other}' and plugin '{plugin_name}'"
                        )
            except Exception as exc:  # noqa: BLE001
                self._mark_broken(info, exc)
                if _strict():
                    raise PluginError(f"plugin '{plugin_name}' failed to register {kind}: {exc}") from exc
                continue
            for spec in staged:
                object.__setattr__(spec, "plugin", plugin_name)
                table[spec.name] = spec
                info.registered.append(f"{kind[:-1]}:{spec.name}")

    # -- lookup --------------------------------------------------------------
    def method(self, name: str) -> MethodSpec:
        return self._get("methods", name)

    def dataset(self, name: str) -> DatasetSpec:
        return self._get("datasets", name)

    def metric(self, name: str) -> MetricSpec:
        return self._get("metrics", name)

    def postprocessor(self, name: str) -> PostprocessorSpec:
        return self._get("postprocessors", name)

    def _get(self, kind: str, name: str) -> Any:
        table = getattr(self, kind)
        if name in table:
            return table[name]
        raise UnknownNameError(unknown_name_message(kind[:-1], name, table))

    def hooks(self, plugin_name: str) -> list[str]:
        """The hooks a loaded plugin implements, sorted (``[]`` for a broken or unknown one)."""
        plugin = self.pm.get_plugin(plugin_name)
        if plugin is None:
            return []
        return sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or [])

    def broken(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]


def unknown_name_message(kind: str, name: str, known) -> str:
    """``unknown method 'weldn'; did you mean 'weldon'?`` listing the closest known names."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.5)
    if close:
        hint = "did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
    else:
        hint = "known: " + (", ".join(sorted(known)) or "none")
    return f"unknown {kind} '{name}'; {hint}"


def _position(order: list[str], name: str) -> int:
    return order.index(name) if name in order else len(order)


def _strict() -> bool:
    return os.environ.get("SEGBENCH_STRICT_PLUGINS", "") not in ("", "0", "false")


_REGISTRY: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = Registry().load()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the loaded registry (tests use it after changing plugins)."""
    global _REGISTRY
    _REGISTRY = None
