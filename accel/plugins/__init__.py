"""accel's plugin system: entry-point discovery (stevedore), hook calling (pluggy), a typed registry."""

from accel.plugins.hookspecs import hookimpl
from accel.plugins.loader import PLATFORM_GROUP, PLUGIN_GROUP, PluginPolicy, run_platform_probes
from accel.plugins.records import (
    DraftStrategySpec,
    EmptyConfig,
    KernelBackendSpec,
    KernelChoice,
    PluginInfo,
    PruningMethodSpec,
    QuantMethodSpec,
    SparseFormatSpec,
)
from accel.plugins.registry import PluginRegistry, get_registry, load_registry, reset_registry

__all__ = [
    "PLATFORM_GROUP",
    "PLUGIN_GROUP",
    "DraftStrategySpec",
    "EmptyConfig",
    "KernelBackendSpec",
    "KernelChoice",
    "PluginInfo",
    "PluginPolicy",
    "PluginRegistry",
    "PruningMethodSpec",
    "QuantMethodSpec",
    "SparseFormatSpec",
    "get_registry",
    "hookimpl",
    "load_registry",
    "reset_registry",
    "run_platform_probes",
]
