"""accel-ascend's hooks: registers the Ascend backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an NPU falls through to core's portable reference.
Importing this module does not import torch_npu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.schema import CapabilityDescriptor
from accel_ascend.platform import AscendPlatform

BACKEND = "ascend"


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """The Ascend backend, ahead of the portable reference."""
    return [
        KernelBackendSpec(
            name=BACKEND,
            description="Huawei Ascend NPUs through torch_npu; runs the portable reference kernels there",
            device_type=AscendPlatform.device_type,
            is_available=AscendPlatform.is_available,
            capability=AscendPlatform.capability,
            kernels=kernels,
            priority=20,
        )
    ]


@hookimpl
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """This backend's kernel for `op` on an NPU; None otherwise, so the reference answers."""
    impl = kernels().get(op)
    if capability.device_type != AscendPlatform.device_type or impl is None:
        return None
    return KernelChoice(backend=BACKEND, op=op, impl=impl, reason="Ascend kernel")
