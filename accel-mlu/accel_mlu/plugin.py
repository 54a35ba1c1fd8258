"""accel-mlu's hook module: registers the Cambricon MLU backend and answers kernel selection for the ops it has.

Its kernels (accel_mlu.kernels) call torch_mlu_ops on the MLU and the portable reference elsewhere; ops not in
the table (W4A16, W8A16) run the reference kernels. Importing this module does not import torch_mlu.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_mlu.kernels import KERNELS
from accel_mlu.platform import MLUPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's kernels by op name (accel.runtime.ops names); other ops run the reference kernels."""
    return dict(KERNELS)


plugin = BackendPlugin(
    KernelBackendSpec(
        name="mlu",
        description=(
            "Cambricon MLUs through torch_mlu_ops: smooth_quant_matmul (int8 W8A8) and single_query_cached_kv_attn "
            "(decode over a 16-bit KV cache); reference kernels otherwise"
        ),
        device_type=MLUPlatform.device_type,
        is_available=MLUPlatform.is_available,
        capability=MLUPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
