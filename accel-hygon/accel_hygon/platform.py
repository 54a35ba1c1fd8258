"""Hygon DCU platform: a cheap probe for discovery, and the platform class that reads the DCU.

Vendor kernels land in a later issue; today this backend runs the portable reference kernels
(accel.runtime.ops) on its device. DCUs run PyTorch's ROCm build, which calls the device "cuda".
The probe does not import torch; only the platform class does, and only when asked.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from accel.schema import CapabilityDescriptor

PLATFORM = "accel_hygon.platform:HygonPlatform"
SMI_TOOLS = ("hy-smi", "rocm-smi")
# Hygon DCU product names (Z100, K100, K100_AI, BW...); AMD's ROCm GPUs carry none of these.
DCU_NAME_MARKS = ("DCU", "Z100", "K100", "BW")
# The reference dequant_linear runs on any torch device, so these formats run here today.
REFERENCE_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym"]


def probe() -> str | None:
    """The platform's dotted name when torch is installed (found, not imported) and a DCU driver shows
    (hy-smi or rocm-smi on PATH, or HIP_VISIBLE_DEVICES set); else None."""
    if importlib.util.find_spec("torch") is None:
        return None
    driver = any(shutil.which(tool) is not None for tool in SMI_TOOLS) or bool(
        os.environ.get("HIP_VISIBLE_DEVICES", "").strip()
    )
    return PLATFORM if driver else None


def is_dcu_name(device_name: str) -> bool:
    """Whether a ROCm device name is a Hygon DCU rather than an AMD GPU."""
    return any(mark in device_name.upper() for mark in DCU_NAME_MARKS)


class HygonPlatform:
    """A Hygon DCU as PyTorch's ROCm runtime reports it."""

    device_type = "dcu"

    @staticmethod
    def is_available() -> bool:
        """True when torch is a ROCm build that sees a GPU named as a Hygon DCU; never raises."""
        try:
            import torch

            return (
                torch.version.hip is not None
                and torch.cuda.is_available()
                and is_dcu_name(torch.cuda.get_device_name(torch.cuda.current_device()))
            )
        except Exception:
            return False

    @staticmethod
    def capability() -> CapabilityDescriptor:
        """The current DCU, from ROCm torch.cuda's device properties and its free/total memory now."""
        import torch

        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        return CapabilityDescriptor(
            device_name=props.name,
            device_type="dcu",
            vendor="Hygon",
            compute_capability=props.gcnArchName.split(":")[0] or None,  # e.g. "gfx928"
            total_memory_bytes=total,
            available_memory_bytes=free,
            supported_dtypes=["fp32", "fp16", "int8", *(["bf16"] if torch.cuda.is_bf16_supported() else [])],
            supported_kernels=[],
            supported_quant_formats=list(REFERENCE_QUANT_FORMATS),
            has_graph_exec=False,
            has_collective=True,  # RCCL
            source="read from ROCm torch.cuda.get_device_properties and torch.cuda.mem_get_info at run time",
        )
