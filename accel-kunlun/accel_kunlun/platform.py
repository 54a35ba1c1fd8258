"""Kunlunxin XPU platform: a cheap probe for discovery, and the platform class that reads the XPU.

This backend runs the portable reference kernels (accel.runtime.ops) on its device. The probe imports nothing of the
vendor stack; only the platform class imports torch_xmlir, and only when asked. capability() lays the running
device's name and memory over its chip family's figures (accel_kunlun.chips).
"""

from __future__ import annotations

from typing import Any

from accel.planning.chips import device_signs, runtime_capability
from accel.schema import CapabilityDescriptor

PLATFORM = "accel_kunlun.platform:KunlunPlatform"
VENDOR_MODULE = "torch_xmlir"
DEVICE_NODES = "/dev/xpu[0-9]*"
DRIVER_TOOLS = ("xpu-smi",)
DEVICE_ENV = ("XPU_VISIBLE_DEVICES",)
# The reference kernels run every int format on any torch device.
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]


def signs() -> list[str]:
    """What on this machine says a Kunlun XPU may be here (empty: nothing)."""
    return device_signs((VENDOR_MODULE,), DRIVER_TOOLS, (DEVICE_NODES,), DEVICE_ENV)


def probe() -> str | None:
    """The platform's dotted name when torch_xmlir is installed (found, not imported), xpu-smi is on PATH, XPU
    device nodes exist or XPU_VISIBLE_DEVICES is set (signs()); else None."""
    return PLATFORM if signs() else None


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
        """The current XPU: its chip family's figures, with the name, free/total memory and bf16 support read now."""
        from accel_kunlun.chips import CHIPS

        xpu = _xpu()
        index = xpu.current_device()
        free, total = xpu.mem_get_info(index)
        dtypes = ["fp32", "fp16", "int8", *(["bf16"] if xpu.is_bf16_supported() else [])]
        fallback = CapabilityDescriptor(
            device_name="", device_type="xpu", vendor="Kunlunxin",
            supported_quant_formats=list(REFERENCE_QUANT_FORMATS), has_collective=True,
            source="read from torch.xpu (torch_xmlir) at run time; no chip family matched the name",
        )
        return runtime_capability(CHIPS, xpu.get_device_name(index), total, free, fallback, supported_dtypes=dtypes)
