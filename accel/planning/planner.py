"""Capability-aware planning: which kernel runs each layer kind of a profile on a device, and what falls back.

    plan = plan_profile(profile, capability, registry, backend="ascend")

For every layer kind of a Llama-style decoder (the q|k|v and o projections, gate|up and down, lm_head, and the
attention over the KV cache) the plan names the format requested by the profile, the format that will run, the
kernel op and who runs it (`registry.select_kernel`, the same answer the runtime gets), and a status:

- "ok":       runs as the profile asks;
- "fallback": the device lacks the format, so a lower one runs instead, with a warning (fp8 KV becomes int8 KV on
              a chip without fp8; fp8 W8A8 becomes int8 W8A8 and needs the weights quantized again);
- "refused":  nothing on this device runs it (the plan's `refused` says why and what to do).

A kernel may carry `native_variants` (a set of format names it runs with the vendor's own operator); a planned
format outside that set is noted as running through the portable reference inside that kernel.

`plan.kernel_meta()` is what an artifact's manifest records under kernel_meta[backend]["plan"] (`write_plan`).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from accel.errors import ArtifactError, PluginError
from accel.plugins.registry import PluginRegistry
from accel.schema import CapabilityDescriptor, QuantizationProfile

__all__ = ["LAYER_KINDS", "LayerPlan", "Plan", "plan_profile", "plan_targets", "record_plan", "write_plan"]

Status = Literal["ok", "fallback", "refused"]
# Linear layer kinds of a Llama-style decoder, with the module names a profile's ignore list matches.
LAYER_KINDS: dict[str, tuple[str, ...]] = {
    "attention.qkv_proj": ("q_proj", "k_proj", "v_proj"),
    "attention.o_proj": ("o_proj",),
    "mlp.gate_up_proj": ("gate_proj", "up_proj"),
    "mlp.down_proj": ("down_proj",),
    "lm_head": ("lm_head",),
}
KV_KIND = "attention.kv_cache"
DENSE = "16-bit"
# Which op runs each weight format (accel.runtime.quant_backend's table).
FORMAT_OPS = {
    DENSE: "linear", "w4a16": "w4a16_linear", "w4a16-asym": "w4a16_linear", "w8a16": "dequant_linear",
    "w8a16-fp8": "dequant_linear", "w8a8-int8": "w8a8_int8_linear", "w8a8-fp8": "fp8_linear",
    "w4a8-int8": "w4a8_int8_linear",
}
# What to run instead when a device lacks a format, best first; each step says what it costs.
WEIGHT_FALLBACKS: dict[str, list[tuple[str, str]]] = {
    "w8a8-fp8": [
        ("w8a8-int8", "fp8 W8A8 -> int8 W8A8: re-quantize the weights to int8 (fp8 codes do not run here)"),
        ("w8a16", "fp8 W8A8 -> int8 weight-only: re-quantize the weights to int8, activations stay 16-bit"),
    ],
    "w8a16-fp8": [("w8a16", "fp8 weight-only -> int8 weight-only: re-quantize the weights to int8")],
    "w8a8-int8": [("w8a16", "int8 W8A8 -> int8 weight-only: the same int8 weights, activations stay 16-bit")],
    "w4a8-int8": [("w4a16", "W4A8 -> W4A16: the same int4 weights, activations stay 16-bit")],
}
KV_FALLBACKS: dict[str, list[tuple[str, str]]] = {
    "kv-fp8": [("kv-int8", "fp8 KV cache -> int8 KV cache (same bytes per token)"),
               (DENSE, "fp8 KV cache -> 16-bit KV cache (twice the KV memory)")],
    "kv-int4": [("kv-int8", "int4 KV cache -> int8 KV cache (about twice the KV memory)"),
                (DENSE, "int4 KV cache -> 16-bit KV cache (about four times the KV memory)")],
    "kv-int8": [(DENSE, "int8 KV cache -> 16-bit KV cache (twice the KV memory)")],
}
KV_RUNTIME = {DENSE: "none", "kv-int8": "int8", "kv-fp8": "fp8", "kv-int4": "int4"}


@dataclass
class LayerPlan:
    """One layer kind: requested and planned format, the op, who runs it (kernel meta) and why."""

    kind: str
    requested: str
    planned: str
    op: str
    backend: str
    kernel: str
    status: Status
    note: str = ""


@dataclass
class Plan:
    """A profile planned for one device: a LayerPlan per layer kind, warnings (fallbacks) and refusals."""

    backend: str
    device: str
    chip: str | None
    profile: str
    layers: list[LayerPlan]
    warnings: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused

    @property
    def kv_format(self) -> str:
        """The runtime's KV cache format ("none", "int8", "fp8", "int4") the plan runs."""
        kv = next(layer for layer in self.layers if layer.kind == KV_KIND)
        return KV_RUNTIME.get(kv.planned, "none")

    def kernel_meta(self) -> dict[str, Any]:
        """The plan as an artifact manifest records it (JSON-serialisable)."""
        return {
            "device": self.device, "chip": self.chip, "profile": self.profile, "ok": self.ok,
            "layers": {layer.kind: {k: v for k, v in asdict(layer).items() if k != "kind"} for layer in self.layers},
            "warnings": list(self.warnings), "refused": list(self.refused),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, **self.kernel_meta()}


def _weight_format(profile: QuantizationProfile) -> str:
    """The format a profile asks of its quantized linears (FORMAT_OPS keys)."""
    if not profile.quantizes_weights and not profile.quantizes_activations:
        return DENSE
    fp8 = profile.weight_type == "float" or profile.activation_type == "float"
    if profile.quantizes_activations:
        return "w8a8-fp8" if fp8 else f"w{profile.weight_bits}a8-int8"
    if fp8:
        return "w8a16-fp8"
    return f"w{profile.weight_bits}a16" + ("" if profile.symmetric or profile.weight_bits != 4 else "-asym")


def _kv_format(profile: QuantizationProfile) -> str:
    if not profile.quantizes_kv:
        return DENSE
    return "kv-fp8" if profile.kv_type == "float" else f"kv-int{min(profile.kv_bits_prefill, profile.kv_bits_decode)}"


def _supported(fmt: str, capability: CapabilityDescriptor) -> bool:
    """Whether the device runs a format (QUANT_FORMATS names; fp8 weight-only needs an fp8 dtype)."""
    if fmt == DENSE:
        return True
    if fmt == "w8a16-fp8":
        return "fp8_e4m3" in capability.supported_dtypes and "w8a16" in capability.supported_quant_formats
    if fmt.startswith("w") and fmt[1] in "23" and fmt.endswith("a16"):  # 2/3-bit weight-only: dequant_linear
        return "w8a16" in capability.supported_quant_formats
    return fmt in capability.supported_quant_formats


def _resolve(
    requested: str, capability: CapabilityDescriptor, fallbacks: dict[str, list[tuple[str, str]]]
) -> tuple[str, Status, str]:
    """(planned format, status, note) for a requested format on this device."""
    if _supported(requested, capability):
        return requested, "ok", ""
    for candidate, note in fallbacks.get(requested, []):
        if _supported(candidate, capability):
            return candidate, "fallback", note
    return requested, "refused", ""


def _kernel(registry: PluginRegistry, op: str, fmt: str, capability: CapabilityDescriptor) -> tuple[str, str, str]:
    """(backend, kernel name, note) of the kernel that runs `op` for `fmt` here."""
    if op == "linear":
        return "torch", "torch.nn.functional.linear", ""
    from accel.runtime.ops import OPS

    if op not in OPS:
        return "reference", "QuantLinear.forward", f"no kernel op is declared for {fmt}; QuantLinear's portable forward"
    choice = registry.select_kernel(op, capability)
    meta = choice.meta()
    native = getattr(choice.impl, "native_variants", None)
    note = ""
    if native is not None and fmt not in native:
        note = f"{choice.backend}'s {op} runs {fmt} through the portable reference (no vendor operator for it)"
    return choice.backend, meta["kernel"], "; ".join(filter(None, [note, choice.note]))


def _refusal(kind: str, fmt: str, capability: CapabilityDescriptor) -> str:
    return (f"{kind}: {capability.device_name} ({capability.device_type}) runs no kernel for {fmt} and has no "
            f"fallback for it (it runs {', '.join(capability.supported_quant_formats) or 'no quantized format'}); "
            "pick a profile with one of those formats")


def plan_profile(
    profile: QuantizationProfile,
    capability: CapabilityDescriptor,
    registry: PluginRegistry,
    *,
    backend: str,
    chip: str | None = None,
) -> Plan:
    """Plan `profile` on a device described by `capability` (module docstring)."""
    plan = Plan(backend=backend, device=capability.device_name, chip=chip, profile=profile.scheme_name(), layers=[])
    weights = _weight_format(profile)
    planned, status, note = _resolve(weights, capability, WEIGHT_FALLBACKS)
    for kind, modules in LAYER_KINDS.items():
        ignored = any(module in profile.ignore for module in modules)
        requested = DENSE if ignored else weights
        fmt, state, why = (DENSE, "ok", "in the profile's ignore list") if ignored else (planned, status, note)
        backend_name, kernel, kernel_note = _kernel(registry, FORMAT_OPS[fmt], fmt, capability)
        plan.layers.append(LayerPlan(kind, requested, fmt, FORMAT_OPS[fmt], backend_name, kernel, state,
                                     "; ".join(filter(None, [why, kernel_note]))))
    if status == "fallback":
        plan.warnings.append(f"weights: {note}")
    elif status == "refused":
        plan.refused.append(_refusal("weights", weights, capability))
    kv = _kv_format(profile)
    kv_planned, kv_status, kv_note = _resolve(kv, capability, KV_FALLBACKS)
    backend_name, kernel, kernel_note = _kernel(registry, "cached_attention", kv_planned, capability)
    plan.layers.append(LayerPlan(KV_KIND, kv, kv_planned, "cached_attention", backend_name, kernel, kv_status,
                                 "; ".join(filter(None, [kv_note, kernel_note]))))
    if kv_status == "fallback":
        plan.warnings.append(f"KV cache: {kv_note}")
    elif kv_status == "refused":
        plan.refused.append(_refusal("KV cache", kv, capability))
    pattern = profile.sparsity_pattern
    if pattern not in ("none", "unstructured") and pattern not in capability.supported_sparse_formats:
        plan.warnings.append(f"sparsity {pattern}: no sparse kernel on {capability.device_name}; the dense-with-zeros "
                             "weights run (no speed-up, same accuracy)")
    limit = capability.max_sequence_length
    if limit is not None and profile.max_sequence_length > limit:
        plan.refused.append(f"max_sequence_length {profile.max_sequence_length} exceeds the device's {limit}")
    return plan


def record_plan(manifest: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """`manifest` with the plan under kernel_meta[plan.backend]["plan"] (other backends' entries kept)."""
    meta = dict(manifest.get("kernel_meta") or {})
    entry = dict(meta.get(plan.backend) or {})
    entry.setdefault("device", plan.device)
    entry["plan"] = plan.kernel_meta()
    meta[plan.backend] = entry
    return {**manifest, "kernel_meta": meta}


def write_plan(artifact: str | os.PathLike[str], plan: Plan) -> Path:
    """Record the plan in an artifact's manifest (atomically). The manifest lists the sha256 of every other file,
    not its own, so the artifact still verifies. Returns the manifest's path."""
    from accel.runtime.artifact import MANIFEST_NAME
    from accel.schema.io import atomic_write_text

    path = Path(artifact).expanduser() / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path}: cannot read the artifact's manifest ({exc}); is this an accel artifact?") from exc
    atomic_write_text(path, json.dumps(record_plan(manifest, plan), indent=2) + "\n")
    return path


def plan_targets(
    registry: PluginRegistry, backend: str | None = None, chip: str | None = None
) -> list[tuple[str, CapabilityDescriptor, str | None]]:
    """What to plan for, as (backend, capability, chip family or None): the chip family `chip` from its published
    figures (it need not be present); else, for a `backend` whose device is absent, each of its chip families;
    else the device in hand (the backend named, or the best available one)."""
    from accel.compat import select_backend
    from accel.planning.chips import chip_families, find_chip

    if chip is not None:
        family = find_chip(chip)
        if backend not in (None, "auto", family.backend):
            raise PluginError(f"--chip {chip} belongs to backend {family.backend!r}, not {backend!r}")
        registry.kernel_backend(family.backend)  # the backend must be installed: an unknown one lists the known
        return [(family.backend, family.capability, family.name)]
    if backend not in (None, "auto") and not registry.kernel_backend(backend).is_available():
        families = [family for family in chip_families().values() if family.backend == backend]
        if not families:
            raise PluginError(f"backend {backend!r}'s device is not present and it lists no chip families to plan for")
        return [(backend, family.capability, family.name) for family in families]
    spec, capability = select_backend(registry, backend or "auto")
    return [(spec.name, capability, None)]
