"""accel-hygon's hooks: registers the Hygon DCU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on a DCU falls through to core's portable reference.
Importing this module imports no vendor stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.schema import CapabilityDescriptor
from accel_hygon.platform import HygonPlatform

BACKEND = "hygon"


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """The Hygon DCU backend, ahead of the portable reference."""
    return [
        KernelBackendSpec(
            name=BACKEND,
            description="Hygon DCUs through ROCm PyTorch; runs the portable reference kernels on the DCU",
            device_type=HygonPlatform.device_type,
            is_available=HygonPlatform.is_available,
            capability=HygonPlatform.capability,
            kernels=kernels,
            priority=20,
        )
    ]


@hookimpl
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """This backend's kernel for `op` on a DCU; None otherwise, so the reference answers."""
    impl = kernels().get(op)
    if capability.device_type != HygonPlatform.device_type or impl is None:
        return None
    return KernelChoice(backend=BACKEND, op=op, impl=impl, reason="Hygon DCU kernel")
