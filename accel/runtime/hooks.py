"""Core's portable reference backend: runs every op in PyTorch on whatever device the tensors are on."""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import KernelBackendSpec, KernelChoice
from accel.runtime.cpu import cpu_capability
from accel.runtime.ops import OPS
from accel.schema import CapabilityDescriptor


def _reference_kernels() -> dict[str, object]:
    return {name: op.reference for name, op in OPS.items()}


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    return [
        KernelBackendSpec(
            name="reference",
            description="portable PyTorch reference kernels (any device; the fallback)",
            device_type="cpu",
            is_available=lambda: True,
            capability=cpu_capability,
            kernels=_reference_kernels,  # type: ignore[arg-type]
            priority=-100,
        )
    ]


@hookimpl(trylast=True)
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """Last resort for every device: the reference implementation, if the op exists."""
    spec = OPS.get(op)
    if spec is None:
        return None
    return KernelChoice(backend="reference", op=op, impl=spec.reference, reason="portable fallback")
