"""accel-cuda's w4a16_sparse24_linear: the 2:4 x int4 decode GEMV where it applies, core's reference otherwise.

`prepare` converts a layer's compact N:M tensors once, at load, into a GEMV's layout (sparse24_layout): on Hopper,
for symmetric weights that tile, the row-interleaved words of the TMA-pipelined GEMV (w4a16_sparse24_tma.py,
layout="tma"); elsewhere the register-prefetch GEMV's (w4a16_sparse24_gemv.py, layout="gemv"). The GEMV serves the
decode M it is planned for; a larger M (prefill) goes back through the reference, so the runtime keeps the dense
weights for prefill and sends only decode here (quant_backend.W4A16Sparse24Linear).
"""

from __future__ import annotations

from typing import Any

import torch

from accel.runtime.ops import w4a16_sparse24_linear as reference
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.sparse24_layout import deinterleave_rows, from_kernel_layout, interleave_rows, to_kernel_layout

__all__ = ["prepare", "w4a16_sparse24_linear"]


def _gemv_applies(k: int, groups: int, group_size: int) -> bool:
    return k % 128 == 0 and group_size == 128 and groups == k // 128


def prepare(
    values_packed: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The layer's weight arguments in the GEMV's layout on a CUDA device when the GEMV takes the shape (group 128,
    K a multiple of 128), with layout="gemv"; else unchanged."""
    k = values_packed.shape[1] * 16
    if not values_packed.is_cuda or not _gemv_applies(k, weight_scale.shape[1], group_size):
        return (values_packed, indices, weight_scale, weight_zero_point, group_size), {}
    words, positions = to_kernel_layout(values_packed, indices)
    if weight_zero_point is None and _tma_applies(words.shape[0], k, words.device):
        return (interleave_rows(words), interleave_rows(positions), weight_scale, None, group_size), {"layout": "tma"}
    return (words, positions, weight_scale, weight_zero_point, group_size), {"layout": "gemv"}


def _tma_applies(n: int, k: int, device: torch.device) -> bool:
    """Hopper (tensor memory accelerator, sm_90 bf16x2 forms) and a shape the TMA GEMV's default launch tiles."""
    if device_info(device).capability[0] != 9:
        return False
    from accel_cuda.kernels.w4a16_sparse24_tma import TmaSparseConfig, supports_tma

    return supports_tma(n, k, TmaSparseConfig())


def w4a16_sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    *,
    layout: str = "compact",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T for a 2:4 W4A16 weight; layout as prepare returned it ("compact": the artifact's own tensors)."""
    if layout not in ("compact", "gemv", "tma"):
        raise ValueError(f"layout must be 'compact', 'gemv' or 'tma', not {layout!r}")
    m = x.numel() // x.shape[-1] if x.shape[-1] else 0
    if layout == "tma" and x.dtype in (torch.float16, torch.bfloat16) and weight_zero_point is None:
        from accel_cuda.kernels import w4a16_sparse24_tma as st
        from accel_cuda.kernels.w4a16_gemv import _device_info

        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config = st.tma_sparse_plan(m, values.shape[0] * st.ROWS, x.shape[-1], _device_info(index)[1])
        if config is not None:
            return st.w4a16_sparse24_tma_gemv(x, values, indices, weight_scale, None, config=config, out=out)
    if layout == "tma":
        values, indices = deinterleave_rows(values), deinterleave_rows(indices)
        layout = "gemv"
    if layout == "gemv" and x.dtype in (torch.float16, torch.bfloat16):
        from accel_cuda.kernels import w4a16_sparse24_gemv as sg
        from accel_cuda.kernels.w4a16_gemv import _device_info

        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config = sg.sparse24_plan(m, values.shape[0], x.shape[-1], *_device_info(index))
        if config is not None:
            return sg.w4a16_sparse24_gemv(x, values, indices, weight_scale, weight_zero_point, config=config, out=out)
    if layout == "gemv":
        values, indices = from_kernel_layout(values, indices)
    y = reference(x, values, indices, weight_scale, weight_zero_point, group_size)
    if out is not None:
        out.copy_(y)
        return out
    return y
