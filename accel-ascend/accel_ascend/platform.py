"""Huawei Ascend platform: a cheap probe for discovery, and the platform class that reads the NPU.

The probe imports nothing of the vendor stack: it looks for torch_npu (found, not imported), the NPU device nodes
(/dev/davinci*), the npu-smi driver tool on PATH, or the Ascend runtime's device environment variables. Only the
platform class imports torch_npu, and only when asked. capability() lays the running device's name and memory over
its chip family's published figures (accel_ascend.chips).
"""

from __future__ import annotations

from typing import Any

from accel.planning.chips import device_signs, runtime_capability
from accel.schema import CapabilityDescriptor

PLATFORM = "accel_ascend.platform:AscendPlatform"
VENDOR_MODULE = "torch_npu"
DEVICE_NODES = "/dev/davinci[0-9]*"
DRIVER_TOOLS = ("npu-smi",)
DEVICE_ENV = ("ASCEND_RT_VISIBLE_DEVICES", "ASCEND_VISIBLE_DEVICES")
# What runs on an NPU of no known family: the int formats every kernel here covers (vendor op or reference).
GENERIC_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]


def signs() -> list[str]:
    """What on this machine says an Ascend NPU may be here (empty: nothing)."""
    return device_signs((VENDOR_MODULE,), DRIVER_TOOLS, (DEVICE_NODES,), DEVICE_ENV)


def probe() -> str | None:
    """The platform's dotted name when anything says an NPU may be here (signs()); else None."""
    return PLATFORM if signs() else None


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
        """The current NPU: its chip family's figures, with the name, free/total memory and bf16 support read now."""
        from accel_ascend.chips import CHIPS
        from accel_ascend.kernels import KERNELS

        npu = _npu()
        index = npu.current_device()
        free, total = npu.mem_get_info(index)
        fallback = CapabilityDescriptor(
            device_name="", device_type="npu", vendor="Huawei",
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if npu.is_bf16_supported() else [])],
            supported_quant_formats=list(GENERIC_QUANT_FORMATS), has_collective=True,
            source="read from torch.npu (torch_npu) at run time; no chip family matched the device name",
        )
        return runtime_capability(CHIPS, npu.get_device_name(index), total, free, fallback,
                                  supported_kernels=sorted(KERNELS))
