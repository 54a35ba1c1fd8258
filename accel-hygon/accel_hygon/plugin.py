"""accel-hygon's hook module: registers the Hygon DCU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on a DCU falls through to core's portable reference.
Importing this module imports no vendor stack.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_hygon.platform import HygonPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


plugin = BackendPlugin(
    KernelBackendSpec(
        name="hygon",
        description="Hygon DCUs through ROCm PyTorch; runs the portable reference kernels on the DCU",
        device_type=HygonPlatform.device_type,
        is_available=HygonPlatform.is_available,
        capability=HygonPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
