"""Weight-only int linear with unpacked int8 codes (W8A16, and any bit width up to 8): accel-cuda's `dequant_linear`.

On Hopper, codes with group size 128 or one scale per channel run the TMA-pipelined tensor-core kernel
(wxa16_tma_dot.py, bits 8) for M up to 128: it reads 8-bit codes instead of a dequantized bf16 copy. Other int8
calls with fp16 / bf16 activations (larger M, other cards and group sizes) dequantize with one Triton kernel
(`w8_dequantize`: (q - zp) * s in fp32, rounded once to x's dtype, as the reference does) and then run cuBLAS; fp8
codes and float32 activations run the reference (torch dequantize, then cuBLAS). The dequantize kernel is launched
with programmatic dependent launch on Hopper (pdl.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from accel.quantization.kernels.reference import dequant_linear as reference
from accel_cuda.kernels import wxa16_tma_dot as tma_dot
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release

__all__ = ["dequant_linear", "w8_dequantize"]


@triton.jit(do_not_specialize=["N", "K", "G", "group"])
def _w8_dequant_kernel(q_ptr, s_ptr, z_ptr, out_ptr, N, K, G, group, HAS_ZP: tl.constexpr,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    """out[n, k] = (q[n, k] - zp[n, k // group]) * s[n, k // group] in fp32, one rounding to out's dtype (G = 1:
    one scale per row)."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows < N)[:, None] & (cols < K)[None, :]
    pdl_enter(PDL)
    q = tl.load(q_ptr + rows[:, None] * K + cols[None, :], mask=mask, other=0).to(tl.float32)
    g = rows[:, None] * G + tl.minimum(cols // group, G - 1)[None, :]
    s = tl.load(s_ptr + g, mask=mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        q -= tl.load(z_ptr + g, mask=mask, other=0).to(tl.float32)
    pdl_release(PDL)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], (q * s).to(out_ptr.dtype.element_ty), mask=mask)


def w8_dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, group_size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """W = (q - zp) * s as [N, K] in `dtype` from int8 codes [N, K] and scales / zero points [N, G] (G = 1: per
    channel, group_size <= 0)."""
    n, k = q.shape
    groups = scale.shape[1]
    group = group_size if group_size > 0 and groups > 1 else max(k, 1)
    out = torch.empty((n, k), dtype=dtype, device=q.device)
    grid = (triton.cdiv(n, 32), triton.cdiv(k, 128))
    pdl = pdl_mode(q.device)
    _w8_dequant_kernel[grid](q, scale, zero_point if zero_point is not None else scale, out, n, k, groups, group,
                             HAS_ZP=zero_point is not None, BLOCK_N=32, BLOCK_K=128, PDL=pdl, num_warps=4,
                             launch_pdl=bool(pdl))
    return out


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
    info = device_info(x.device)
    cfg = tma_dot.tma_dot_plan(m, n, k, 8, info.name, info.capability, info.sms)
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
    `config` forces a tensor-core launch (tests, benchmarks)."""
    cfg = config or _plan(x, q, scale, zero_point, group_size)
    tensors = [t for t in (q, scale, zero_point) if t is not None]
    if cfg is not None and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in tensors):
        y = tma_dot.wxa16_tma_dot(x, q, scale, zero_point, bits=8, config=cfg)
        if bias is not None:
            y += bias.to(y.dtype)
        return y
    if _dequantizes(x, q, scale, zero_point, group_size):
        weight = w8_dequantize(q.contiguous(), scale.contiguous(),
                               None if zero_point is None else zero_point.contiguous(), group_size, x.dtype)
        return torch.nn.functional.linear(x, weight, None if bias is None else bias.to(x.dtype))
    return reference(x, q, scale, zero_point, group_size, bias)


def _dequantizes(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                 group_size: int) -> bool:
    """Whether w8_dequantize takes this call: int8 codes on the GPU, fp16 / bf16 activations, scales (and zero
    points) [N, G] with G = ceil(K / group size), or G = 1 per channel."""
    if not x.is_cuda or x.dtype not in (torch.float16, torch.bfloat16) or q.dtype != torch.int8 or q.dim() != 2:
        return False
    n, k = q.shape
    if scale.dim() != 2 or scale.shape[0] != n or x.shape[-1] != k:
        return False
    groups = scale.shape[1]
    if groups != (1 if group_size <= 0 else -(-k // group_size)):
        return False
    return zero_point is None or (zero_point.shape == scale.shape and not zero_point.is_floating_point())
