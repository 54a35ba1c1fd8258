"""Hygon DCU chip families (entry point `accel.chip_families`).

DCUs run PyTorch's ROCm build from Hygon's DTK, so what runs is what ROCm PyTorch and Triton-on-ROCm run: accel's
Triton kernels (from accel-cuda) for W4A16 and attention over 16-bit / int8 / int4 KV, the portable reference for
the rest. Hygon publishes no per-product peak throughput or bandwidth we could cite, so those figures are unset; the
runtime reads name, memory and bf16 support from the device (accel_hygon.platform). No fp8: ROCm PyTorch's fp8 types
target AMD's CDNA3 parts, which DCUs are not.
"""

from __future__ import annotations

from accel.planning.chips import ChipFamily
from accel.schema import CapabilityDescriptor

DCU_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]
SOURCES = {
    "dtypes": "fp16 / int8 assumed for planning; bf16 as torch.cuda.is_bf16_supported() reports it on the device",
    "quant_formats": "accel_hygon.kernels (accel-cuda's Triton W4A16 and attention) + the portable reference",
    "peak_tflops": "unset: no published figure found (Hygon's product pages give none we could cite)",
    "memory": "unset for planning; capability() reads it from the device",
    "bandwidth": "unset: no published figure found",
    "graph": "unset: hipGraph capture on DTK is not confirmed by a source we read",
    "collective": "RCCL (ROCm's NCCL), through torch.distributed's nccl backend on ROCm builds",
}


def _family(name: str, description: str, names: tuple[str, ...], arch: str) -> ChipFamily:
    return ChipFamily(
        name=name, backend="hygon", description=description, device_names=names,
        capability=CapabilityDescriptor(
            device_name=name.upper(), device_type="dcu", vendor="Hygon", compute_capability=arch,
            supported_dtypes=["fp32", "fp16", "int8"], supported_quant_formats=list(DCU_FORMATS),
            has_graph_exec=False, has_collective=True, source="accel_hygon.chips (no published figures)",
        ),
        sources=SOURCES,
    )


CHIPS = [
    _family("dcu-z100", "Hygon DCU Z100 / Z100L (Deep Computing Unit, first generation)", (r"Z100",), "gfx906"),
    _family("dcu-k100", "Hygon DCU K100", (r"K100(?!_AI)",), "gfx926"),
    _family("dcu-k100-ai", "Hygon DCU K100_AI", (r"K100_AI", r"BW"), "gfx928"),
]
