"""RMSNorm in Triton: one launch per call, where core's torch reference runs ~7 kernels.

Op rms_norm (accel.runtime.norm_ops.rms_norm is the contract and the reference): for each row of x [..., H],
y = w * cast_x(x / sqrt(mean(x^2) + eps)), the mean and rsqrt in float32, the normalized row cast to x's dtype
before the weight multiply, y in torch's promotion of w's and x's dtypes. A Llama-3-8B forward runs it 65 times;
the reference chain (cast, pow, mean, add, rsqrt, mul, cast, mul) costs ~2 us of device time per kernel inside a
CUDA graph at decode and ~30 us of host time per launch in an eager prefill.

Each program holds BLOCK_M whole rows in registers (BLOCK_M = 1 at Llama's hidden 4096; several rows per program
for short rows): loads them once, sums the squares in float32, scales by rsqrt, casts to x's dtype, multiplies by
the weight in float32 and rounds once to the output dtype, as torch computes the product (of two 16-bit values it is
exact in float32). H up to MAX_HIDDEN, the tail past H masked.

Not bit-exact with torch: the row's sum of squares is added in the kernel's tree order, torch's in its own (CPU:
cascade sum, then divided by H; CUDA: its reduction tree, times fp32(1 / H), which the kernel uses too). rsqrt is
the hardware approximation in both on a GPU (numpy's 1 / sqrt under the interpreter). So the float32 normalized row
agrees with torch's to ~1e-6 relative; the cast to bf16 (fp16) then rounds the same way except for an element
within that distance of a rounding boundary: a rare element (of order 1e-4 of them in bf16: 1e-6 over bf16's 2^-8)
lands one ulp of x's dtype away, and its product with the weight about one ulp of the output away. In float32 the
output agrees to ~1e-6 relative. tests/test_cuda_rms_norm.py checks these bounds on a GPU and
tests/test_cuda_interpret.py under the interpreter, which truncates float32 -> bf16 instead of rounding to nearest
(bf16 there agrees to one ulp, not rarely).

Layouts the kernel does not take run the reference: a last dimension of non-unit stride, leading dimensions that do
not collapse into one row stride, dtypes other than fp16 / bf16 / fp32, H > MAX_HIDDEN, empty tensors, and tensors
off the GPU (unless TRITON_INTERPRET=1).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.norm_ops import check_rms_norm
from accel.runtime.norm_ops import rms_norm as reference

__all__ = ["MAX_HIDDEN", "NormConfig", "plan", "rms_norm"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HIDDEN = 16384  # a row of fp32 in registers: 16 warps x 32 lanes x 32 values
_ROW_ELEMENTS = 2048  # short rows are packed into programs of about this many elements


# The row count only bounds the mask: not specialized (one compile for every batch size, decode's 1 included).
@triton.jit(do_not_specialize=["M"])
def _rms_norm_kernel(
    x_ptr,
    w_ptr,
    out_ptr,
    M,
    stride_xm,
    stride_w,
    stride_om,
    eps,
    H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    """Program i: rows i * BLOCK_M .. + BLOCK_M of x [M, H] (row stride stride_xm) -> out [M, H]."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)  # M * H may pass 2^31 in a long prefill
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)  # [BLOCK_M, BLOCK_H]
    h = x.to(tl.float32)
    mean_sq = tl.sum(h * h, axis=1) * (1.0 / H)  # [BLOCK_M]; masked columns add 0
    normed = (h * tl.math.rsqrt(mean_sq + eps)[:, None]).to(x.dtype)  # cast to x's dtype before the weight
    w = tl.load(w_ptr + cols * stride_w, mask=col_ok, other=0.0).to(tl.float32)
    y = normed.to(tl.float32) * w[None, :]
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class NormConfig:
    """One launch: rows per program (a power of two) and Triton's warps per program."""

    block_m: int
    num_warps: int


def plan(rows: int, hidden: int) -> NormConfig:
    """One row per program from 2048 columns up (Llama's 4096: a decode row is one program, a 2k prefill 2048
    programs), else as many rows as fill about 2048 elements; one warp per 512 elements (16 per lane: two 16-byte
    loads of bf16), 1 to 16 warps."""
    block_h = triton.next_power_of_2(hidden)
    block_m = min(triton.next_power_of_2(max(rows, 1)), max(1, _ROW_ELEMENTS // block_h))
    return NormConfig(block_m=block_m, num_warps=max(1, min(16, block_m * block_h // 512)))


def _row_stride(x: torch.Tensor) -> int | None:
    """The stride between consecutive rows of x viewed as [M, H], or None when the leading dimensions do not
    collapse into one stride (dimensions of size 1 do not count)."""
    stride, expected = x.shape[-1], None
    for size, step in zip(reversed(x.shape[:-1]), reversed(x.stride()[:-1]), strict=True):
        if size == 1:
            continue
        if expected is None:
            stride = step
        elif step != expected:
            return None
        expected = step * size
    return stride


def _supported(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The tensors the kernel takes directly, their rows' layout aside (anything else runs the reference): the
    module docstring."""
    return (
        (x.is_cuda or INTERPRET)
        and x.device == weight.device
        and x.dtype in _DTYPES
        and weight.dtype in _DTYPES
        and x.numel() > 0
        and x.shape[-1] <= MAX_HIDDEN
        and x.stride(-1) == 1
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, config: NormConfig | None = None) -> torch.Tensor:
    """Triton RMSNorm; same contract as accel.runtime.norm_ops.rms_norm (the reference), which runs instead for
    layouts the kernel does not take (module docstring). The kernel writes a new contiguous tensor; `config`
    overrides the plan."""
    check_rms_norm(x, weight)
    row_stride = _row_stride(x) if _supported(x, weight) else None
    if row_stride is None:
        return reference(x, weight, eps)
    hidden = x.shape[-1]
    rows = x.numel() // hidden
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    cfg = config or plan(rows, hidden)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _rms_norm_kernel[(triton.cdiv(rows, cfg.block_m),)](
            x,
            weight,
            out,
            rows,
            row_stride,
            weight.stride(0),
            hidden,
            eps,
            H=hidden,
            BLOCK_M=cfg.block_m,
            BLOCK_H=triton.next_power_of_2(hidden),
            num_warps=cfg.num_warps,
        )
    return out
