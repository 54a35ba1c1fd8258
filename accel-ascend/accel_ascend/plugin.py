"""accel-ascend's hook module: registers the Ascend backend and answers kernel selection for the ops it has.

Its kernels (accel_ascend.kernels) call torch_npu's quantized operators on the NPU and the portable reference
elsewhere; W4A16 weights are re-packed once at load for npu_weight_quant_batchmatmul (KernelChoice.prepare).
Importing this module does not import torch_npu.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.plugins.backend import BackendPlugin
from accel.schema import CapabilityDescriptor
from accel_ascend.kernels import KERNELS, PREPARE
from accel_ascend.platform import AscendPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's kernels by op name (accel.runtime.ops names); other ops run the reference kernels."""
    return dict(KERNELS)


class AscendPlugin(BackendPlugin):
    """BackendPlugin whose choices carry the load-time weight conversion of the ops that need one."""

    @hookimpl
    def accel_select_kernel(self, op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
        choice = super().accel_select_kernel(op, capability)
        if choice is None:
            return None
        return dataclasses.replace(choice, reason="torch_npu operator (reference off the NPU)", prepare=PREPARE.get(op))


plugin = AscendPlugin(
    KernelBackendSpec(
        name="ascend",
        description=(
            "Huawei Ascend NPUs through torch_npu: npu_weight_quant_batchmatmul (W4A16/W8A16), npu_quant_matmul "
            "(int8 W8A8), npu_fused_infer_attention_score (decode over 16-bit or int8 KV); reference otherwise"
        ),
        device_type=AscendPlatform.device_type,
        is_available=AscendPlatform.is_available,
        capability=AscendPlatform.capability,
        kernels=kernels,
        priority=20,
    )
)
