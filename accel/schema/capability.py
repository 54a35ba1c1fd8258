"""CapabilityDescriptor: what a kernel backend's device can do, and whether a profile can run on it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from accel.schema.base import AccelModel
from accel.schema.quantization import QuantizationProfile

DeviceType = Literal["cpu", "cuda", "npu", "mlu", "dcu", "xpu"]

# Quant formats a backend can list in `supported_quant_formats` (the names profiles are checked against).
QUANT_FORMATS = (
    "w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "w8a8-fp8", "w4a8-int8",
    "kv-int8", "kv-int4", "kv-fp8",
)


class CapabilityDescriptor(AccelModel):
    """What a backend reports about its device. Memory in bytes, throughput in TFLOPS, bandwidth in GB/s."""

    device_name: str
    device_type: DeviceType
    vendor: str = "unknown"
    compute_capability: str | None = None
    total_memory_bytes: int = Field(default=0, ge=0)
    available_memory_bytes: int = Field(default=0, ge=0)
    supported_dtypes: list[str] = Field(default_factory=list)
    supported_kernels: list[str] = Field(default_factory=list)
    supported_quant_formats: list[str] = Field(default_factory=list)
    supported_sparse_formats: list[str] = Field(default_factory=list)
    has_graph_exec: bool = False
    has_collective: bool = False
    max_batch_size: int | None = Field(default=None, gt=0)
    max_sequence_length: int | None = Field(default=None, gt=0)
    peak_tflops: dict[str, float] = Field(default_factory=dict)
    memory_bandwidth_gbps: float | None = Field(default=None, gt=0)
    source: str = ""


def required_formats(profile: QuantizationProfile) -> list[str]:
    """The quant formats (QUANT_FORMATS names) a profile needs from a backend."""
    needed: list[str] = []
    if profile.quantizes_weights or profile.quantizes_activations:
        if profile.weight_type == "float" or profile.activation_type == "float":
            needed.append("w8a8-fp8" if profile.quantizes_activations else "w8a16")
        elif profile.quantizes_activations:
            needed.append(f"w{profile.weight_bits}a8-int8")
        else:
            needed.append(f"w{profile.weight_bits}a16" + ("" if profile.symmetric else "-asym"))
    if profile.quantizes_kv:
        bits = min(profile.kv_bits_prefill, profile.kv_bits_decode)
        needed.append("kv-fp8" if profile.kv_type == "float" else f"kv-int{bits}")
    return needed


def profile_support(profile: QuantizationProfile, capability: CapabilityDescriptor) -> list[str]:
    """Reasons the profile cannot run as written on this device; an empty list means it can."""
    reasons = [
        f"{capability.device_name} ({capability.device_type}) has no kernel for {fmt}"
        for fmt in required_formats(profile)
        if fmt not in capability.supported_quant_formats
    ]
    structured = profile.sparsity_pattern not in ("none", "unstructured")
    if structured and profile.sparsity_pattern not in capability.supported_sparse_formats:
        reasons.append(
            f"{capability.device_name} has no sparse kernel for {profile.sparsity_pattern}; "
            "the dense-with-zeros weights would run instead"
        )
    limit = capability.max_sequence_length
    if limit is not None and profile.max_sequence_length > limit:
        reasons.append(f"max_sequence_length {profile.max_sequence_length} exceeds the device's {limit}")
    return reasons
