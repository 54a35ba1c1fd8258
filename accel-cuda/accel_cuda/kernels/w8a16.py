"""Weight-only int linear with unpacked int8 codes (W8A16, and any bit width up to 8): accel-cuda's `dequant_linear`.

On Hopper, codes with group size 128 or one scale per channel run the TMA-pipelined tensor-core kernel
(wxa16_tma_dot.py, bits 8) for M up to 128: it reads 8-bit codes instead of a dequantized bf16 copy. Everything else
(other cards, group sizes, fp8 codes, float32 activations, larger M) runs the reference: dequantize in x's dtype,
then cuBLAS, which is what the op did on every GPU before this kernel.
"""

from __future__ import annotations

import torch

from accel.quantization.kernels.reference import dequant_linear as reference
from accel_cuda.kernels import wxa16_tma_dot as tma_dot

__all__ = ["dequant_linear"]


def _plan(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
          group_size: int) -> tma_dot.TmaDotConfig | None:
    """The tensor-core launch for this call, or None where the kernel does not apply."""
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16) or q.dtype != torch.int8 or q.dim() != 2:
        return None
    n, k = q.shape
    groups = scale.shape[1] if scale.dim() == 2 else 0
    if x.shape[-1] != k or scale.shape[0] != n or scale.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        return None
    if not (group_size == tma_dot.GROUP or (group_size <= 0 and groups == 1)):
        return None
    if zero_point is not None and (zero_point.dtype != torch.int8 or zero_point.shape != scale.shape):
        return None
    m = x.numel() // k if k else 0
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    props = torch.cuda.get_device_properties(index)
    cfg = tma_dot.tma_dot_plan(m, n, k, 8, props.name, (props.major, props.minor), props.multi_processor_count)
    if cfg is None or not tma_dot.supports_tma_dot(n, k, groups, cfg, 8, zero_point is not None):
        return None
    return cfg


def dequant_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
    *,
    config: tma_dot.TmaDotConfig | None = None,
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T (+ bias); same contract as accel.quantization.kernels.reference.dequant_linear.
    `config` forces a launch (tests, benchmarks)."""
    cfg = config or _plan(x, q, scale, zero_point, group_size)
    tensors = [t for t in (q, scale, zero_point) if t is not None]
    if cfg is None or any(not t.is_contiguous() or t.data_ptr() % 16 for t in tensors):
        return reference(x, q, scale, zero_point, group_size, bias)
    y = tma_dot.wxa16_tma_dot(x, q, scale, zero_point, bits=8, config=cfg)
    if bias is not None:
        y += bias.to(y.dtype)
    return y
