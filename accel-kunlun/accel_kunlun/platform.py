"""Kunlunxin XPU platform: a cheap probe for discovery, and the platform class that reads the XPU.

Vendor kernels land in a later issue; today this backend runs the portable reference kernels
(accel.runtime.ops) on its device. Only the platform class imports torch_xmlir, and only when asked.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Any

from accel.schema import CapabilityDescriptor

PLATFORM = "accel_kunlun.platform:KunlunPlatform"
VENDOR_MODULE = "torch_xmlir"
# The reference dequant_linear runs on any torch device, so these formats run here today.
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym"]


def probe() -> str | None:
    """The platform's dotted name when torch_xmlir is installed (found, not imported), xpu-smi is on
    PATH, or XPU_VISIBLE_DEVICES is set; else None."""
    present = (
        importlib.util.find_spec(VENDOR_MODULE) is not None
        or shutil.which("xpu-smi") is not None
        or bool(os.environ.get("XPU_VISIBLE_DEVICES", "").strip())
    )
    return PLATFORM if present else None


def _xpu() -> Any:
    """torch.xpu once torch_xmlir is imported; without that import torch.xpu is Intel's GPU runtime."""
    import torch
    import torch_xmlir  # noqa: F401

    return torch.xpu


class KunlunPlatform:
    """A Kunlunxin XPU as torch_xmlir's runtime reports it."""

    device_type = "xpu"

    @staticmethod
    def is_available() -> bool:
        """True when torch_xmlir imports and torch.xpu sees a device; never raises."""
        try:
            return bool(_xpu().is_available())
        except Exception:
            return False

    @staticmethod
    def capability() -> CapabilityDescriptor:
        """The current XPU, from torch.xpu's device name and its free/total memory now."""
        xpu = _xpu()
        index = xpu.current_device()
        free, total = xpu.mem_get_info(index)
        return CapabilityDescriptor(
            device_name=xpu.get_device_name(index),
            device_type="xpu",
            vendor="Kunlunxin",
            total_memory_bytes=total,
            available_memory_bytes=free,
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if xpu.is_bf16_supported() else [])],
            supported_kernels=[],
            supported_quant_formats=list(REFERENCE_QUANT_FORMATS),
            has_graph_exec=False,
            has_collective=True,  # BKCL
            source="read from torch.xpu (torch_xmlir) device name and mem_get_info at run time",
        )
