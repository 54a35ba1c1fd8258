"""accel-kunlun's hooks: registers the Kunlunxin XPU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an XPU falls through to core's portable reference.
Importing this module does not import torch_xmlir.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.schema import CapabilityDescriptor
from accel_kunlun.platform import KunlunPlatform

BACKEND = "kunlun"


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """The Kunlunxin XPU backend, ahead of the portable reference."""
    return [
        KernelBackendSpec(
            name=BACKEND,
            description="Kunlunxin XPUs through torch_xmlir; runs the portable reference kernels on the XPU",
            device_type=KunlunPlatform.device_type,
            is_available=KunlunPlatform.is_available,
            capability=KunlunPlatform.capability,
            kernels=kernels,
            priority=20,
        )
    ]


@hookimpl
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """This backend's kernel for `op` on an XPU; None otherwise, so the reference answers."""
    impl = kernels().get(op)
    if capability.device_type != KunlunPlatform.device_type or impl is None:
        return None
    return KernelChoice(backend=BACKEND, op=op, impl=impl, reason="Kunlunxin XPU kernel")
