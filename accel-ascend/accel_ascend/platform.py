"""Huawei Ascend platform: a cheap probe for discovery, and the platform class that reads the NPU.

Vendor kernels land in a later issue; today this backend runs the portable reference kernels
(accel.runtime.ops) on its device. Only the platform class imports torch_npu, and only when asked.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from accel.schema import CapabilityDescriptor

PLATFORM = "accel_ascend.platform:AscendPlatform"
VENDOR_MODULE = "torch_npu"
# The reference dequant_linear runs on any torch device, so these formats run here today.
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym"]


def probe() -> str | None:
    """The platform's dotted name when torch_npu is installed (found, not imported); else None."""
    return PLATFORM if importlib.util.find_spec(VENDOR_MODULE) is not None else None


def _npu() -> Any:
    """torch.npu, which exists once torch_npu is imported (the import registers the 'npu' device)."""
    import torch
    import torch_npu  # noqa: F401

    return torch.npu


class AscendPlatform:
    """An Ascend NPU as torch_npu's runtime reports it."""

    device_type = "npu"

    @staticmethod
    def is_available() -> bool:
        """True when torch_npu imports and sees an NPU; never raises (False without the CANN stack)."""
        try:
            return bool(_npu().is_available())
        except Exception:
            return False

    @staticmethod
    def capability() -> CapabilityDescriptor:
        """The current NPU, from torch.npu's device name and its free/total memory now."""
        npu = _npu()
        index = npu.current_device()
        free, total = npu.mem_get_info(index)
        return CapabilityDescriptor(
            device_name=npu.get_device_name(index),
            device_type="npu",
            vendor="Huawei",
            total_memory_bytes=total,
            available_memory_bytes=free,
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if npu.is_bf16_supported() else [])],
            supported_kernels=[],
            supported_quant_formats=list(REFERENCE_QUANT_FORMATS),
            has_graph_exec=False,
            has_collective=True,  # HCCL
            source="read from torch.npu (torch_npu) device name and mem_get_info at run time",
        )
