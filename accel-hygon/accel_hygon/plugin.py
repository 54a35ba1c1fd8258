"""accel-hygon's hook module: registers the Hygon DCU backend and answers kernel selection for the ops it has.

Its kernel table (accel_hygon.kernels) holds accel-cuda's Triton W4A16 linear and attention when accel-cuda and
Triton are installed, with accel-cuda's load-time W4A16 weight permutation (KernelChoice.prepare); every other op
runs the portable reference. Importing this module imports neither Triton nor accel-cuda.
"""

from __future__ import annotations

import dataclasses

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.plugins.backend import BackendPlugin
from accel.schema import CapabilityDescriptor
from accel_hygon.kernels import PREPARE, kernels
from accel_hygon.platform import HygonPlatform


class HygonPlugin(BackendPlugin):
    """BackendPlugin whose W4A16 choice carries the Triton kernel's load-time weight permutation."""

    @hookimpl
    def accel_select_kernel(self, op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
        choice = super().accel_select_kernel(op, capability)
        return None if choice is None else dataclasses.replace(choice, reason="Triton on ROCm", prepare=PREPARE.get(op))


plugin = HygonPlugin(
    KernelBackendSpec(
        name="hygon",
        description=(
            "Hygon DCUs through PyTorch ROCm: accel-cuda's Triton W4A16 and flash-decoding attention when installed "
            "(pip install accel-hygon[triton]); reference kernels otherwise"
        ),
        device_type=HygonPlatform.device_type,
        is_available=HygonPlatform.is_available,
        capability=HygonPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
