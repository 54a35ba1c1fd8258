"""accel-kunlun's hook module: registers the Kunlunxin XPU backend and answers kernel selection only for ops it has.

Its kernel table is empty, so every op on an XPU runs core's portable reference. Kunlun's own quantized operators
exist (baidu/vLLM-Kunlun calls torch.ops._C.scaled_int8_quant and torch.ops._C.matmul with x_pc_max / w_pc_max in
vllm_kunlun/ops/quantization/kernels/kunlun_scale_mm.py), but they are registered by vLLM-Kunlun itself, documented
only by that call site, and bound to the "cuda" device name that torch_xmlir builds use; we could not confirm a
standalone, documented signature, so no call is made to them. Importing this module does not import torch_xmlir.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec
from accel.plugins.backend import BackendPlugin
from accel_kunlun.platform import KunlunPlatform


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name: none (module docstring), so the reference kernels run."""
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
