"""NVIDIA CUDA platform: a cheap probe for discovery, and the platform class that reads the GPU.

Vendor kernels land in a later issue; today this backend runs the portable reference kernels
(accel.runtime.ops) on its device. The probe imports only torch, which core has already imported.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch

from accel.schema import CapabilityDescriptor

PLATFORM = "accel_cuda.platform:CudaPlatform"
NVIDIA_DRIVER_DIR = "/proc/driver/nvidia"
# What the runtime runs on a CUDA GPU (the Triton kernels, or the portable references where Triton is missing):
# weight-only int everywhere; int8 activations and int8 / int4 KV from Ampere (sm_80); fp8 from Ada (sm_89).
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym"]
AMPERE_QUANT_FORMATS = ["w8a8-int8", "kv-int8", "kv-int4"]
FP8_QUANT_FORMATS = ["w8a8-fp8", "kv-fp8"]


def probe() -> str | None:
    """The platform's dotted name when an NVIDIA driver shows (tool, /proc entry or env) and torch is
    not a ROCm build (those DCUs belong to accel-hygon); else None."""
    if torch.version.hip is not None:
        return None
    driver = (
        shutil.which("nvidia-smi") is not None
        or os.path.isdir(NVIDIA_DRIVER_DIR)
        or bool(os.environ.get("CUDA_VISIBLE_DEVICES", "").strip())
    )
    return PLATFORM if driver else None


def peak_memory_bandwidth_gbps(props: Any) -> float | None:
    """Peak DRAM bandwidth the runtime implies: 2 transfers per clock x memory clock (kHz) x bus width
    (bytes), NVIDIA's theoretical-bandwidth formula; None where torch does not report the two fields."""
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if not clock_khz or not bus_bits:
        return None
    return 2 * clock_khz * 1e3 * (bus_bits / 8) / 1e9


class CudaPlatform:
    """An NVIDIA GPU as PyTorch's CUDA runtime reports it."""

    device_type = "cuda"

    @staticmethod
    def is_available() -> bool:
        """True when torch is a CUDA (not ROCm) build that sees a GPU; never raises."""
        try:
            return torch.version.hip is None and torch.cuda.is_available()
        except Exception:
            return False

    @staticmethod
    def capability() -> CapabilityDescriptor:
        """The current GPU, from torch.cuda's device properties and its free/total memory now."""
        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        sm = (props.major, props.minor)
        dtypes = ["fp32", "fp16", "int8"]
        formats = list(REFERENCE_QUANT_FORMATS)
        if sm >= (8, 0):
            dtypes.append("bf16")
            formats += AMPERE_QUANT_FORMATS
        if sm >= (8, 9):
            dtypes += ["fp8_e4m3", "fp8_e5m2"]
            formats += FP8_QUANT_FORMATS
        from accel_cuda.plugin import kernels  # Triton kernels present on this install (empty without Triton)

        return CapabilityDescriptor(
            device_name=props.name,
            device_type="cuda",
            vendor="NVIDIA",
            compute_capability=f"{props.major}.{props.minor}",
            total_memory_bytes=total,
            available_memory_bytes=free,
            supported_dtypes=dtypes,
            supported_kernels=sorted(kernels()),
            supported_quant_formats=formats,
            # the 2:4 x int4 decode GEMV (W4A16 layers; its PTX needs sm_90's bf16x2 arithmetic)
            supported_sparse_formats=["2:4"] if sm >= (9, 0) and "w4a16_sparse24_linear" in kernels() else [],
            has_graph_exec=True,  # CUDA graphs
            has_collective=True,  # NCCL
            memory_bandwidth_gbps=peak_memory_bandwidth_gbps(props),
            source=(
                "read from torch.cuda.get_device_properties and torch.cuda.mem_get_info at run time; "
                "bandwidth is 2 x memory clock x bus width"
            ),
        )
