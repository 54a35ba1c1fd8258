"""The plugin registry: loads plugins into a pluggy manager and offers typed access to what they register.

Call sites use PluginRegistry's methods, never `pm.hook` directly (tox 4's typed facade).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from accel.errors import DuplicatePluginError, PluginError, UnsupportedProfileError
from accel.plugins import hookspecs
from accel.plugins.loader import (
    ENV_DENY,
    PLUGIN_GROUP,
    PluginPolicy,
    distribution_of,
    load_group,
)
from accel.plugins.records import (
    NAME_PATTERN,
    DraftStrategySpec,
    KernelBackendSpec,
    KernelChoice,
    PluginInfo,
    PruningMethodSpec,
    QuantMethodSpec,
    Record,
    SparseFormatSpec,
)

if TYPE_CHECKING:
    import typer

    from accel.schema import CapabilityDescriptor

# Core's built-ins: registered through the same hooks as any plugin, under these plugin names.
BUILTIN_MODULES: dict[str, str] = {
    "builtin-quantization": "accel.quantization.hooks",
    "builtin-sparsity": "accel.sparsity.hooks",
    "builtin-speculative": "accel.speculative.hooks",
    "builtin-reference-backend": "accel.runtime.hooks",
}

# Registration hook -> (record type, registry namespace, install hint for a missing name).
REGISTRATION_HOOKS: dict[str, tuple[type, str]] = {
    "accel_register_quant_methods": (QuantMethodSpec, "quant_method"),
    "accel_register_sparse_formats": (SparseFormatSpec, "sparse_format"),
    "accel_register_pruning_methods": (PruningMethodSpec, "pruning_method"),
    "accel_register_draft_strategies": (DraftStrategySpec, "draft_strategy"),
    "accel_register_kernel_backends": (KernelBackendSpec, "kernel_backend"),
}

R = TypeVar("R")


def _core_version() -> str:
    try:
        return version("accel")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class Registered:
    record: Record
    plugin: PluginInfo


@dataclass
class PluginRegistry:
    """Everything the loaded plugins registered, by namespace and name, with the plugin behind each."""

    manager: pluggy.PluginManager
    plugins: list[PluginInfo]
    policy: PluginPolicy
    entries: dict[str, dict[str, Registered]] = field(default_factory=dict)
    kernel_trace: list[KernelChoice] = field(default_factory=list)

    # Typed lookups.
    def quant_methods(self) -> dict[str, QuantMethodSpec]:
        return self._records("quant_method", QuantMethodSpec)

    def sparse_formats(self) -> dict[str, SparseFormatSpec]:
        return self._records("sparse_format", SparseFormatSpec)

    def pruning_methods(self) -> dict[str, PruningMethodSpec]:
        return self._records("pruning_method", PruningMethodSpec)

    def draft_strategies(self) -> dict[str, DraftStrategySpec]:
        return self._records("draft_strategy", DraftStrategySpec)

    def kernel_backends(self) -> dict[str, KernelBackendSpec]:
        return self._records("kernel_backend", KernelBackendSpec)

    def quant_method(self, name: str) -> QuantMethodSpec:
        return self._lookup("quant_method", name, QuantMethodSpec)

    def pruning_method(self, name: str) -> PruningMethodSpec:
        return self._lookup("pruning_method", name, PruningMethodSpec)

    def draft_strategy(self, name: str) -> DraftStrategySpec:
        return self._lookup("draft_strategy", name, DraftStrategySpec)

    def kernel_backend(self, name: str) -> KernelBackendSpec:
        return self._lookup("kernel_backend", name, KernelBackendSpec)

    def sparse_format_for(self, pattern: str) -> SparseFormatSpec:
        """The format that owns a pattern ('2:4' -> the N:M format)."""
        for spec in self.sparse_formats().values():
            if spec.handles(pattern):
                return spec
        known = ", ".join(self.sparse_formats())
        raise UnsupportedProfileError(f"no sparse format handles pattern {pattern!r}; registered formats: {known}")

    def provider(self, namespace: str, name: str) -> PluginInfo:
        """The plugin (and so the distribution) that registered `name`."""
        return self.entries[namespace][name].plugin

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.status == "failed"]

    # Hook calls.
    def select_kernel(self, op: str, capability: CapabilityDescriptor) -> KernelChoice:
        """Ask the backends who runs `op` on this device (firstresult); record the answer."""
        choice = self.manager.hook.accel_select_kernel(op=op, capability=capability)
        if choice is None:
            raise UnsupportedProfileError(
                f"no kernel backend runs op {op!r} on {capability.device_name} ({capability.device_type})"
            )
        self.kernel_trace.append(choice)
        return choice

    def register_commands(self, app: typer.Typer) -> list[str]:
        """Let every plugin add commands; a plugin whose hook raises is reported, not fatal."""
        errors: list[str] = []
        for impl in self.manager.hook.accel_register_commands.get_hookimpls():
            try:
                impl.function(app=app)
            except Exception as exc:
                message = f"plugin {impl.plugin_name!r} failed to add commands: {type(exc).__name__}: {exc}"
                if self.policy.strict:
                    raise PluginError(message) from exc
                errors.append(message)
        return errors

    # Internals.
    def _records(self, namespace: str, kind: type[R]) -> dict[str, R]:
        return {name: entry.record for name, entry in self.entries.get(namespace, {}).items()}  # type: ignore[misc]

    def _lookup(self, namespace: str, name: str, kind: type[R]) -> R:
        records = self._records(namespace, kind)
        if name not in records:
            known = ", ".join(sorted(records)) or "none"
            raise UnsupportedProfileError(
                f"unknown {namespace.replace('_', ' ')} {name!r}; registered: {known}. "
                f"If a plugin provides it, install that distribution (e.g. pip install accel[...]) and "
                f"check `sage infer plugins` for load errors."
            )
        return records[name]


def _hooks_of(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    return sorted(caller.name for caller in manager.get_hookcallers(plugin) or [])


def _collect(manager: pluggy.PluginManager, plugin_name: str) -> dict[str, list[Record]]:
    """Call one plugin's registration hooks and type-check what they return."""
    plugin = manager.get_plugin(plugin_name)
    collected: dict[str, list[Record]] = {}
    for hook_name, (record_type, namespace) in REGISTRATION_HOOKS.items():
        for impl in getattr(manager.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            records = impl.function() or []
            if not isinstance(records, list | tuple):
                raise PluginError(f"{hook_name} must return a list of {record_type.__name__}, got {records!r}")
            for record in records:
                if not isinstance(record, record_type):
                    raise PluginError(
                        f"{hook_name} returned {type(record).__name__}; expected {record_type.__name__}"
                    )
                if not NAME_PATTERN.match(record.name):
                    raise PluginError(
                        f"{hook_name}: name {record.name!r} must be lower-case letters, digits, '_-:.'"
                    )
                collected.setdefault(namespace, []).append(record)
    return collected


class _Loader:
    """Builds a PluginRegistry: built-ins first, then entry points, collecting failures."""

    def __init__(self, policy: PluginPolicy) -> None:
        self.policy = policy
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.plugins: list[PluginInfo] = []
        self.entries: dict[str, dict[str, Registered]] = {}

    def fail(self, info: PluginInfo, error: BaseException) -> None:
        info.status = "failed"
        info.error = f"{type(error).__name__}: {error}"
        if self.manager.get_plugin(info.name) is not None:
            self.manager.unregister(name=info.name)
        if self.policy.strict:
            raise PluginError(
                f"plugin {info.name!r} from {info.distribution} {info.version} failed to load "
                f"(strict mode, ACCEL_STRICT_PLUGINS): {info.error}"
            ) from error

    def add(self, info: PluginInfo, plugin: object | Callable[[], ModuleType]) -> None:
        """Register one plugin object, check its hooks, collect its records."""
        self.plugins.append(info)
        try:
            self.manager.register(plugin, name=info.name)
            self.manager.check_pending()  # a misspelt hook name fails here, loudly
            info.hooks = _hooks_of(self.manager, plugin)
            collected = _collect(self.manager, info.name)
        except (PluginError, pluggy.PluginValidationError, Exception) as exc:
            self.fail(info, exc)
            return
        for namespace, records in collected.items():
            table = self.entries.setdefault(namespace, {})
            for record in records:
                if record.name in table:
                    other = table[record.name].plugin
                    raise DuplicatePluginError(
                        f"{namespace.replace('_', ' ')} {record.name!r} is registered by both "
                        f"{other.distribution} (plugin {other.name!r}) and {info.distribution} "
                        f"(plugin {info.name!r}); uninstall one or set {ENV_DENY}={info.name}"
                    )
                table[record.name] = Registered(record, info)
                info.provides.setdefault(namespace, []).append(record.name)

    def load(self) -> PluginRegistry:
        core_version = _core_version()
        for name, module_name in BUILTIN_MODULES.items():
            info = PluginInfo(name, "accel", core_version, "builtin", module_name, "loaded")
            self.add(info, importlib.import_module(module_name))
        result = load_group(PLUGIN_GROUP, self.policy)
        for entry_point in result.skipped:
            dist, ver = distribution_of(entry_point)
            self.plugins.append(
                PluginInfo(entry_point.name, dist, ver, PLUGIN_GROUP, entry_point.value, "disabled")
            )
        for ext in result.extensions:
            dist, ver = distribution_of(ext.entry_point)
            info = PluginInfo(ext.name, dist, ver, PLUGIN_GROUP, ext.entry_point.value, "loaded")
            self.add(info, ext.plugin)
        for entry_point, error in result.failures:
            dist, ver = distribution_of(entry_point)
            info = PluginInfo(entry_point.name, dist, ver, PLUGIN_GROUP, entry_point.value, "loaded")
            self.plugins.append(info)
            self.fail(info, error)
        return PluginRegistry(self.manager, self.plugins, self.policy, self.entries)


def load_registry(policy: PluginPolicy | None = None) -> PluginRegistry:
    """A fresh registry under `policy` (default: from the environment)."""
    return _Loader(policy or PluginPolicy.from_env()).load()


_REGISTRY: PluginRegistry | None = None


def get_registry() -> PluginRegistry:
    """The process-wide registry, loaded on first use."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = load_registry()
    return _REGISTRY


def reset_registry() -> None:
    """Forget the process-wide registry (tests, or after installing a plugin)."""
    global _REGISTRY
    _REGISTRY = None


def describe(registry: PluginRegistry) -> list[dict[str, Any]]:
    """JSON-ready list of every plugin, loaded or not."""
    return [info.to_dict() for info in registry.plugins]
