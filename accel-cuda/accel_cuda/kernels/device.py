"""What the kernels' plans read of a GPU (name, compute capability, SM count), queried once per device: a query
costs 4-6 us of host time, and a prefill calls the linear ops ~130 times (host time is TTFT when the host is the
bottleneck, KERNEL_NOTES.md)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

__all__ = ["DeviceInfo", "device_info"]


@dataclass(frozen=True)
class DeviceInfo:
    """A device's name (the tuned tables' key), compute capability and streaming multiprocessor count."""

    name: str
    capability: tuple[int, int]
    sms: int


# CPU tensors (Triton's interpreter): no card; plans fall back to their defaults for an H200-sized one.
CPU = DeviceInfo(name="", capability=(0, 0), sms=132)


@functools.cache
def _cuda_info(index: int) -> DeviceInfo:
    props = torch.cuda.get_device_properties(index)
    return DeviceInfo(name=props.name, capability=(props.major, props.minor), sms=props.multi_processor_count)


def device_info(device: torch.device) -> DeviceInfo:
    """The cached DeviceInfo of a tensor's device; CPU for anything that is not CUDA."""
    if device.type != "cuda":
        return CPU
    return _cuda_info(device.index if device.index is not None else torch.cuda.current_device())
