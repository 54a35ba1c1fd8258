"""accel-mlu's hook module: registers the MLU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an MLU falls through to core's portable reference.
Importing this module does not import torch_mlu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_mlu.platform import MLUPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


plugin = BackendPlugin(
    KernelBackendSpec(
        name="mlu",
        description="Cambricon MLUs through torch_mlu; runs the portable reference kernels on the MLU",
        device_type=MLUPlatform.device_type,
        is_available=MLUPlatform.is_available,
        capability=MLUPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
