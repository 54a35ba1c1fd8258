"""accel-mlu's hooks: registers the MLU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an MLU falls through to core's portable reference.
Importing this module does not import torch_mlu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.schema import CapabilityDescriptor
from accel_mlu.platform import MLUPlatform

BACKEND = "mlu"


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """The MLU backend, ahead of the portable reference."""
    return [
        KernelBackendSpec(
            name=BACKEND,
            description="Cambricon MLUs through torch_mlu; runs the portable reference kernels on the MLU",
            device_type=MLUPlatform.device_type,
            is_available=MLUPlatform.is_available,
            capability=MLUPlatform.capability,
            kernels=kernels,
            priority=20,
        )
    ]


@hookimpl
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """This backend's kernel for `op` on an MLU; None otherwise, so the reference answers."""
    impl = kernels().get(op)
    if capability.device_type != MLUPlatform.device_type or impl is None:
        return None
    return KernelChoice(backend=BACKEND, op=op, impl=impl, reason="MLU kernel")
