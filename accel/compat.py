"""Can this config run here? Backend selection by capability, and the reasons a config cannot run."""

from __future__ import annotations

from dataclasses import dataclass, field

from accel.errors import UnsupportedProfileError
from accel.plugins.records import KernelBackendSpec
from accel.plugins.registry import PluginRegistry
from accel.schema import AccelConfig, CapabilityDescriptor, profile_support


@dataclass
class CompatReport:
    """The backend chosen, its device, and every reason the config cannot run there (empty = it can)."""

    backend: str
    capability: CapabilityDescriptor
    reasons: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.reasons

    def to_dict(self) -> dict[str, object]:
        return {
            "backend": self.backend,
            "device": self.capability.device_name,
            "device_type": self.capability.device_type,
            "ok": self.ok,
            "reasons": self.reasons,
        }


def select_backend(registry: PluginRegistry, preferred: str = "auto") -> tuple[KernelBackendSpec, CapabilityDescriptor]:
    """`preferred` by name, or with 'auto' the available backend of highest priority (the portable
    reference backend is always available, at the lowest priority)."""
    backends = registry.kernel_backends()
    if preferred != "auto":
        spec = registry.kernel_backend(preferred)
        if not spec.is_available():
            raise UnsupportedProfileError(
                f"kernel backend {preferred!r} is installed but its device is not present here; "
                f"available: {', '.join(n for n, b in backends.items() if b.is_available())}"
            )
        return spec, spec.capability()
    for spec in sorted(backends.values(), key=lambda b: -b.priority):
        if spec.is_available():
            return spec, spec.capability()
    raise UnsupportedProfileError("no kernel backend is available (the reference backend failed to load?)")


def plugin_reasons(config: AccelConfig, registry: PluginRegistry) -> list[str]:
    """Names in the config that no loaded plugin provides."""
    reasons: list[str] = []
    quant = config.quantization
    if quant.method != "none" and quant.method not in registry.quant_methods():
        known = ", ".join(sorted(registry.quant_methods()))
        reasons.append(
            f"quantization.method {quant.method!r} is not provided by any loaded plugin (have: {known}); "
            f"install the distribution that provides it, e.g. pip install accel-{quant.method.replace('_', '')}"
        )
    patterns = {quant.sparsity_pattern} | ({config.sparsity.pattern} if config.sparsity else set())
    for pattern in sorted(patterns - {"none"}):
        if not any(spec.handles(pattern) for spec in registry.sparse_formats().values()):
            reasons.append(f"no loaded sparse format handles pattern {pattern!r}")
    sparsity = config.sparsity
    if sparsity is not None and sparsity.method not in registry.pruning_methods():
        known = ", ".join(sorted(registry.pruning_methods()))
        reasons.append(
            f"sparsity.method {sparsity.method!r} is not available (pruning methods: {known}); "
            "wanda and sparsegpt come with pip install accel-sparsegpt"
        )
    spec_cfg = config.speculative
    if spec_cfg is not None and spec_cfg.enabled and spec_cfg.strategy not in registry.draft_strategies():
        known = ", ".join(sorted(registry.draft_strategies()))
        reasons.append(
            f"speculative.strategy {spec_cfg.strategy!r} is not provided by any loaded plugin (have: {known})"
        )
    return reasons


def check_config(config: AccelConfig, registry: PluginRegistry, backend: str | None = None) -> CompatReport:
    """Everything that stops `config` from running on `backend` (default: the profile's kernel_backend)."""
    spec, capability = select_backend(registry, backend or config.quantization.kernel_backend)
    reasons = plugin_reasons(config, registry) + profile_support(config.quantization, capability)
    return CompatReport(backend=spec.name, capability=capability, reasons=reasons)
