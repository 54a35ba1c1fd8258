"""BackendPlugin: the two hooks every kernel-backend distribution implements, given its KernelBackendSpec.

A vendor distribution's hook module is one line: `plugin = BackendPlugin(KernelBackendSpec(...))`, with the
entry point naming `module:plugin`. It registers the backend and answers `accel_select_kernel` for ops in
its kernel table on its own device type only, so every other op falls through to core's reference.
"""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import KernelBackendSpec, KernelChoice
from accel.schema import CapabilityDescriptor


class BackendPlugin:
    """Registers one kernel backend and selects its kernels on its device type."""

    def __init__(self, spec: KernelBackendSpec) -> None:
        self.spec = spec

    @hookimpl
    def accel_register_kernel_backends(self) -> list[KernelBackendSpec]:
        return [self.spec]

    @hookimpl
    def accel_select_kernel(self, op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
        if capability.device_type != self.spec.device_type:
            return None
        impl = self.spec.kernels().get(op)
        if impl is None:
            return None
        return KernelChoice(backend=self.spec.name, op=op, impl=impl, reason=f"{self.spec.name} kernel")
