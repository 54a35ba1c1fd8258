"""Finding and importing plugins through entry points with stevedore, under the environment's controls.

Environment (read at load time):
- ACCEL_PLUGINS: comma-separated allowlist of entry-point names; when set, only these load.
- ACCEL_DISABLE_PLUGINS: comma-separated denylist; these never load.
- ACCEL_STRICT_PLUGINS=1: a plugin that fails to load is an error instead of a report (use in CI).
Core's built-ins are not entry points and are not affected by the lists.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from typing import Any

from stevedore import ExtensionManager, NamedExtensionManager
from stevedore.extension import Extension

from accel.errors import DuplicatePluginError

PLUGIN_GROUP = "accel.plugins"
PLATFORM_GROUP = "accel.platform_plugins"
ENV_ALLOW = "ACCEL_PLUGINS"
ENV_DENY = "ACCEL_DISABLE_PLUGINS"
ENV_STRICT = "ACCEL_STRICT_PLUGINS"


@dataclass(frozen=True)
class PluginPolicy:
    """Which plugins may load, and whether a failure is fatal."""

    allow: frozenset[str] | None = None
    deny: frozenset[str] = frozenset()
    strict: bool = False

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> PluginPolicy:
        env = os.environ if environ is None else environ

        def names(var: str) -> frozenset[str]:
            return frozenset(n.strip() for n in env.get(var, "").split(",") if n.strip())

        allow = names(ENV_ALLOW) if env.get(ENV_ALLOW, "").strip() else None
        strict = env.get(ENV_STRICT, "").strip().lower() in ("1", "true", "yes", "on")
        return cls(allow=allow, deny=names(ENV_DENY), strict=strict)

    def permits(self, name: str) -> bool:
        return name not in self.deny and (self.allow is None or name in self.allow)


def distribution_of(entry_point: EntryPoint) -> tuple[str, str]:
    """(distribution name, version) that declared the entry point.

    stevedore's entry-point cache drops `EntryPoint.dist`, so it is looked up in the installed metadata.
    """
    key = (entry_point.group, entry_point.name, entry_point.value)
    return _declaring_distributions(tuple(sys.path)).get(key, ("unknown", "unknown"))


@functools.lru_cache(maxsize=8)
def _declaring_distributions(_path: tuple[str, ...]) -> dict[tuple[str, str, str], tuple[str, str]]:
    """Scan installed metadata once per sys.path (which decides what is installed)."""
    found: dict[tuple[str, str, str], tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group in (PLUGIN_GROUP, PLATFORM_GROUP):
                found.setdefault((ep.group, ep.name, ep.value), (dist.metadata["Name"], dist.version))
    return found


def _raise_on_duplicate(namespace: str, name: str, extensions: list[Extension[Any]]) -> Extension[Any]:
    dists = [f"{distribution_of(ext.entry_point)[0]} ({ext.entry_point.value})" for ext in extensions]
    raise DuplicatePluginError(
        f"entry point {name!r} in group {namespace!r} is declared by more than one distribution: "
        f"{' and '.join(dists)}; uninstall one, or set {ENV_DISABLE_HINT}"
    )


ENV_DISABLE_HINT = f"{ENV_DENY} to skip one by name"


def entry_point_names(group: str) -> list[str]:
    """Entry-point names in a group, without importing anything (for CLI choices)."""
    ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)
    return sorted({ep.name for ep in ExtensionManager(group).list_entry_points()})


def all_entry_points(group: str) -> list[EntryPoint]:
    """Every entry point in a group, fresh (the in-process cache is dropped first)."""
    ExtensionManager.ENTRY_POINT_CACHE.pop(group, None)
    return list(ExtensionManager(group).list_entry_points())


@dataclass
class LoadResult:
    extensions: list[Extension[Any]]
    failures: list[tuple[EntryPoint, BaseException]]
    skipped: list[EntryPoint]


def load_group(group: str, policy: PluginPolicy) -> LoadResult:
    """Import the permitted entry points of a group; collect failures instead of raising."""
    every = all_entry_points(group)
    permitted = [ep.name for ep in every if policy.permits(ep.name)]
    skipped = [ep for ep in every if not policy.permits(ep.name)]
    failures: list[tuple[EntryPoint, BaseException]] = []

    def on_failure(_manager: object, entry_point: EntryPoint, error: BaseException) -> None:
        failures.append((entry_point, error))

    manager: NamedExtensionManager[Any] = NamedExtensionManager(
        group,
        names=sorted(set(permitted)),
        name_order=True,
        on_load_failure_callback=on_failure,
        on_missing_entrypoints_callback=lambda _names: None,
        conflict_resolver=_raise_on_duplicate,
    )
    return LoadResult(extensions=list(manager), failures=failures, skipped=skipped)


@dataclass(frozen=True)
class PlatformProbe:
    """A platform probe's answer: the dotted name of the platform it found, or None (absent)."""

    name: str
    distribution: str
    version: str
    platform: str | None
    error: str | None = None


def run_platform_probes(policy: PluginPolicy) -> list[PlatformProbe]:
    """Call every permitted probe in `accel.platform_plugins`. Probes must not import vendor stacks;
    a probe that raises is reported with its error, never fatal (strict mode included: a probe
    failing means the platform is absent)."""
    result = load_group(PLATFORM_GROUP, policy)
    probes: list[PlatformProbe] = []
    for ext in result.extensions:
        dist, version = distribution_of(ext.entry_point)
        probe: Callable[[], str | None] = ext.plugin
        try:
            found = probe()
        except Exception as exc:  # a probe must never take discovery down
            probes.append(PlatformProbe(ext.name, dist, version, None, f"{type(exc).__name__}: {exc}"))
            continue
        probes.append(PlatformProbe(ext.name, dist, version, found if isinstance(found, str) else None))
    for entry_point, error in result.failures:
        dist, version = distribution_of(entry_point)
        probes.append(PlatformProbe(entry_point.name, dist, version, None, f"{type(error).__name__}: {error}"))
    return sorted(probes, key=lambda p: p.name)
