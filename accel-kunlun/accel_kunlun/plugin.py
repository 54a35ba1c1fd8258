"""accel-kunlun's hook module: registers the Kunlunxin XPU backend and answers kernel selection only for ops it has.

Its kernel table is empty today, so every op on an XPU falls through to core's portable reference.
Importing this module does not import torch_xmlir.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_kunlun.platform import KunlunPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name; none yet, so the reference kernels run."""
    return {}


plugin = BackendPlugin(
    KernelBackendSpec(
        name="kunlun",
        description="Kunlunxin XPUs through torch_xmlir; runs the portable reference kernels on the XPU",
        device_type=KunlunPlatform.device_type,
        is_available=KunlunPlatform.is_available,
        capability=KunlunPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
