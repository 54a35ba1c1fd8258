"""accel-ascend's hook module: registers the Ascend backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an NPU falls through to core's portable reference.
Importing this module does not import torch_npu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_ascend.platform import AscendPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


plugin = BackendPlugin(
    KernelBackendSpec(
        name="ascend",
        description="Huawei Ascend NPUs through torch_npu; runs the portable reference kernels there",
        device_type=AscendPlatform.device_type,
        is_available=AscendPlatform.is_available,
        capability=AscendPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
