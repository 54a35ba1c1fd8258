"""Cambricon MLU platform: a cheap probe for discovery, and the platform class that reads the MLU.

The probe imports nothing of the vendor stack: it looks for torch_mlu (found, not imported), the MLU device nodes
(/dev/cambricon_dev*), Cambricon's cnmon tool on PATH, or MLU_VISIBLE_DEVICES. Only the platform class imports
torch_mlu, and only when asked. capability() lays the running device's name and memory over its chip family's
published figures (accel_mlu.chips).
"""

from __future__ import annotations

from typing import Any

from accel.planning.chips import device_signs, runtime_capability
from accel.schema import CapabilityDescriptor

PLATFORM = "accel_mlu.platform:MLUPlatform"
VENDOR_MODULE = "torch_mlu"
DEVICE_NODES = "/dev/cambricon_dev[0-9]*"
DRIVER_TOOLS = ("cnmon",)
DEVICE_ENV = ("MLU_VISIBLE_DEVICES",)
# What runs on an MLU of no known family: the int formats every kernel here covers (vendor op or reference).
GENERIC_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]


def signs() -> list[str]:
    """What on this machine says a Cambricon MLU may be here (empty: nothing)."""
    return device_signs((VENDOR_MODULE,), DRIVER_TOOLS, (DEVICE_NODES,), DEVICE_ENV)


def probe() -> str | None:
    """The platform's dotted name when anything says an MLU may be here (signs()); else None."""
    return PLATFORM if signs() else None


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
        """The current MLU: its chip family's figures, with the name, free/total memory and bf16 support read now."""
        from accel_mlu.chips import CHIPS
        from accel_mlu.kernels import KERNELS

        mlu = _mlu()
        index = mlu.current_device()
        free, total = mlu.mem_get_info(index)
        fallback = CapabilityDescriptor(
            device_name="", device_type="mlu", vendor="Cambricon",
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if mlu.is_bf16_supported() else [])],
            supported_quant_formats=list(GENERIC_QUANT_FORMATS), has_collective=True,
            source="read from torch.mlu (torch_mlu) at run time; no chip family matched the device name",
        )
        return runtime_capability(CHIPS, mlu.get_device_name(index), total, free, fallback,
                                  supported_kernels=sorted(KERNELS))
