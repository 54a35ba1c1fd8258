"""Hygon DCU platform: a cheap probe for discovery, and the platform class that reads the DCU.

DCUs run PyTorch's ROCm build, which calls the device "cuda". The probe does not import torch; only the platform
class does, and only when asked. capability() lays the running device's name, architecture and memory over its
chip family's figures (accel_hygon.chips).
"""

from __future__ import annotations

import importlib.util
import os
import shutil

from accel.planning.chips import runtime_capability
from accel.schema import CapabilityDescriptor

PLATFORM = "accel_hygon.platform:HygonPlatform"
SMI_TOOLS = ("hy-smi", "rocm-smi")
# Hygon DCU product names (Z100, K100, K100_AI, BW...); AMD's ROCm GPUs carry none of these.
DCU_NAME_MARKS = ("DCU", "Z100", "K100", "BW")
# What runs on a DCU of no known family: the int formats the Triton kernels or the reference cover.
GENERIC_QUANT_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]


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
        """The current DCU: its chip family's figures, with name, gfx architecture, memory and bf16 support read
        through ROCm's torch.cuda now."""
        import torch

        from accel_hygon.chips import CHIPS
        from accel_hygon.kernels import kernels

        index = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        free, total = torch.cuda.mem_get_info(index)
        dtypes = ["fp32", "fp16", "int8", *(["bf16"] if torch.cuda.is_bf16_supported() else [])]
        fallback = CapabilityDescriptor(
            device_name="", device_type="dcu", vendor="Hygon", supported_quant_formats=list(GENERIC_QUANT_FORMATS),
            has_collective=True, source="read from ROCm torch.cuda at run time; no chip family matched the name",
        )
        return runtime_capability(
            CHIPS, props.name, total, free, fallback, supported_dtypes=dtypes, supported_kernels=sorted(kernels()),
            compute_capability=props.gcnArchName.split(":")[0] or None,  # e.g. "gfx928"
        )
