"""Cambricon MLU platform: a cheap probe for discovery, and the platform class that reads the MLU.

Vendor kernels land in a later issue; today this backend runs the portable reference kernels
(accel.runtime.ops) on its device. Only the platform class imports torch_mlu, and only when asked.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from accel.schema import CapabilityDescriptor

PLATFORM = "accel_mlu.platform:MLUPlatform"
VENDOR_MODULE = "torch_mlu"
# The reference dequant_linear runs on any torch device, so these formats run here today.
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym"]


def probe() -> str | None:
    """The platform's dotted name when torch_mlu is installed (found, not imported); else None."""
    return PLATFORM if importlib.util.find_spec(VENDOR_MODULE) is not None else None


def _mlu() -> Any:
    """torch.mlu, which exists once torch_mlu is imported (the import registers the 'mlu' device)."""
    import torch
    import torch_mlu  # noqa: F401

    return torch.mlu


class MLUPlatform:
    """A Cambricon MLU as torch_mlu's runtime reports it."""

    device_type = "mlu"

    @staticmethod
    def is_available() -> bool:
        """True when torch_mlu imports and sees an MLU; never raises (False without the Neuware stack)."""
        try:
            return bool(_mlu().is_available())
        except Exception:
            return False

    @staticmethod
    def capability() -> CapabilityDescriptor:
        """The current MLU, from torch.mlu's device name and its free/total memory now."""
        mlu = _mlu()
        index = mlu.current_device()
        free, total = mlu.mem_get_info(index)
        return CapabilityDescriptor(
            device_name=mlu.get_device_name(index),
            device_type="mlu",
            vendor="Cambricon",
            total_memory_bytes=total,
            available_memory_bytes=free,
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if mlu.is_bf16_supported() else [])],
            supported_kernels=[],
            supported_quant_formats=list(REFERENCE_QUANT_FORMATS),
            has_graph_exec=False,
            has_collective=True,  # CNCL
            source="read from torch.mlu (torch_mlu) device name and mem_get_info at run time",
        )
