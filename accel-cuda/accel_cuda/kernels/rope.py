"""RoPE in Triton: q and k rotated in one launch, where core's torch reference runs ~10 kernels a layer.

Op rotary_embedding (accel.runtime.rope_ops.rotary_embedding is the contract and the reference): for x = q [B, T, H, D]
and k [B, T, Hkv, D] (views into the fused qkv projection: any strides but the last), with cos / sin [B or 1, T, D]
shared by the heads, x * cos + rotate_half(x) * sin, i.e. per pair of halves x1 = x[:D/2], x2 = x[D/2:]

    out[:D/2] = x1 * cos[:D/2] + (-x2) * sin[:D/2]        out[D/2:] = x2 * cos[D/2:] + x1 * sin[D/2:]

written to new contiguous tensors. The reference chain (neg, cat, 2 mul, add for q, the same for k) costs ~600 us per
Llama-3-8B decode step at batch 1 on an H200.

Grid (B * T tokens, ceil(H / BLOCK_H) + ceil(Hkv / BLOCK_H) head blocks): program (n, j) rotates BLOCK_H heads of
token n, q's for the first ceil(H / BLOCK_H) blocks and k's after. It loads its heads' two halves and the token's cos
and sin once, BLOCK_D = next power of two of D/2 columns a half, the tail past D/2 and the heads past H (Hkv) masked.

Bit-exact with torch: torch rounds each product to x's dtype (its float32 result), then adds the two rounded products
in float32 and rounds the sum; the kernel does the same. A product of two bf16 / fp16 values is exact in float32, so
rounding it once gives torch's product. In float32 both compute plain float32 products and sum, with fp fusion off so
that the compiler contracts no multiply-add into an FMA (torch rounds the product first). Under the interpreter fp32 and
fp16 are exact too; it truncates float32 -> bf16 instead of rounding to nearest, so bf16 there is within one bf16 ulp
of each product and of the sum (tests/test_cuda_interpret.py).

Layouts the kernel does not take run the reference: a last dimension of non-unit stride (q, k, cos or sin), dtypes
other than fp16 / bf16 / fp32, D > MAX_HEAD_DIM, empty tensors, and tensors off the GPU (unless TRITON_INTERPRET=1).

Launched with programmatic dependent launch on Hopper (pdl.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.rope_ops import check_rotary_embedding
from accel.runtime.rope_ops import rotary_embedding as reference
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release

__all__ = ["MAX_HEAD_DIM", "RopeConfig", "plan", "rotary_embedding"]

POISON = False  # tests: fill the outputs with NaN first, so elements the kernel leaves unwritten show
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256
_PROGRAM_ELEMENTS = 1024  # heads per program: about this many elements (8 heads of 128)


@triton.jit
def _rotate_heads(
    src,
    dst,
    cos_row,
    sin_row,
    h0,
    heads,
    stride_h,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """Heads h0 .. h0 + BLOCK_H (of `heads`) of one token: src (head stride stride_h) -> dst (contiguous [heads, D]);
    lets the next kernel launch (pdl_release) before its stores: every program calls this once."""
    h = h0 + tl.arange(0, BLOCK_H)
    cols = tl.arange(0, BLOCK_D)
    col_ok = cols < HALF
    mask = (h < heads)[:, None] & col_ok[None, :]
    x_ptr = src + h.to(tl.int64)[:, None] * stride_h + cols[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_H, BLOCK_D]
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    cos1 = tl.load(cos_row + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    cos2 = tl.load(cos_row + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    sin1 = tl.load(sin_row + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    sin2 = tl.load(sin_row + HALF + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    dtype = dst.dtype.element_ty
    # As torch: x * cos and rotate_half(x) * sin each rounded to x's dtype (exact products in float32), then the sum.
    # The first half subtracts x2 * sin rather than adding (-x2) * sin: rounding is symmetric and a + (-b) is a - b in
    # IEEE arithmetic, zeros' signs included, where Triton's -x2 (0 - x2) would turn +0.0 into +0.0, not torch's -0.0.
    out1 = (x1 * cos1).to(dtype).to(tl.float32) - (x2 * sin1).to(dtype).to(tl.float32)
    out2 = (x2 * cos2).to(dtype).to(tl.float32) + (x1 * sin2).to(dtype).to(tl.float32)
    out_ptr = dst + h[:, None] * (2 * HALF) + cols[None, :]
    pdl_release(PDL)
    tl.store(out_ptr, out1.to(dtype), mask=mask)
    tl.store(out_ptr + HALF, out2.to(dtype), mask=mask)


# The token count T only splits n into (b, t): not specialized (one compile for every batch size and prompt length).
@triton.jit(do_not_specialize=["T"])
def _rope_kernel(
    q_ptr,
    k_ptr,
    cos_ptr,
    sin_ptr,
    q_out,
    k_out,
    T,
    H,
    HKV,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_cb,
    stride_ct,
    stride_sb,
    stride_st,
    HALF: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (n, j): token n = b * T + t, head block j of q's heads then of k's (module docstring); PDL: pdl.py's
    mode."""
    n = tl.program_id(0).to(tl.int64)  # B * T * H * D may pass 2^31 in a long prefill
    j = tl.program_id(1)
    b = n // T
    t = n % T
    cos_row = cos_ptr + b * stride_cb + t * stride_ct  # stride_cb 0: one table for the batch
    sin_row = sin_ptr + b * stride_sb + t * stride_st
    q_blocks = tl.cdiv(H, BLOCK_H)
    pdl_enter(PDL)
    if j < q_blocks:
        src = q_ptr + b * stride_qb + t * stride_qt
        dst = q_out + n * H * (2 * HALF)
        _rotate_heads(src, dst, cos_row, sin_row, j * BLOCK_H, H, stride_qh, HALF, BLOCK_H, BLOCK_D, PDL)
    else:
        src = k_ptr + b * stride_kb + t * stride_kt
        dst = k_out + n * HKV * (2 * HALF)
        _rotate_heads(
            src, dst, cos_row, sin_row, (j - q_blocks) * BLOCK_H, HKV, stride_kh, HALF, BLOCK_H, BLOCK_D, PDL
        )


@dataclass(frozen=True)
class RopeConfig:
    """One launch: heads per program (a power of two) and Triton's warps per program."""

    block_h: int
    num_warps: int


def plan(heads: int, head_dim: int) -> RopeConfig:
    """Heads per program filling about 1024 elements (8 at head_dim 128: a Llama-3-8B token is 4 q programs and 1 k
    program), at most the larger head count rounded up to a power of two; one warp per 512 elements (16 per lane:
    two 16-byte loads of bf16 per half), 1 to 8 warps. Independent of the token count: one compile for all."""
    block_d = triton.next_power_of_2(max(head_dim // 2, 1))
    block_h = min(triton.next_power_of_2(max(heads, 1)), max(1, _PROGRAM_ELEMENTS // (2 * block_d)))
    return RopeConfig(block_h=block_h, num_warps=max(1, min(8, block_h * 2 * block_d // 512)))


def _supported(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> bool:
    """The tensors the kernel takes directly (anything else runs the reference): the module docstring."""
    tensors = (q, k, cos, sin)
    return (
        (q.is_cuda or INTERPRET)
        and all(x.device == q.device for x in tensors)
        and q.dtype in _DTYPES
        and q.numel() > 0
        and k.numel() > 0
        and q.shape[-1] <= MAX_HEAD_DIM
        and all(x.stride(-1) == 1 for x in tensors)
    )


def _new_output(x: torch.Tensor) -> torch.Tensor:
    """A contiguous tensor of x's shape and dtype for the kernel to fill (NaN first under POISON)."""
    if POISON:
        return torch.full(x.shape, float("nan"), dtype=x.dtype, device=x.device)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


def rotary_embedding(
    q: torch.Tensor,
    k: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    *,
    config: RopeConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton RoPE on q and k in one launch; same contract as accel.runtime.rope_ops.rotary_embedding (the
    reference), which runs instead for layouts the kernel does not take (module docstring). The kernel writes new
    contiguous tensors; `config` overrides the plan."""
    check_rotary_embedding(q, k, cos, sin)
    if not _supported(q, k, cos, sin):
        return reference(q, k, cos, sin)
    b, t, h, d = q.shape
    hkv = k.shape[2]
    q_out, k_out = (_new_output(x) for x in (q, k))
    cfg = config or plan(max(h, hkv), d)
    # A table of batch 1 serves every row: batch stride 0.
    cos_b, sin_b = (0 if x.shape[0] == 1 else x.stride(0) for x in (cos, sin))
    grid = (b * t, triton.cdiv(h, cfg.block_h) + triton.cdiv(hkv, cfg.block_h))
    pdl = pdl_mode(q.device)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _rope_kernel[grid](
            q,
            k,
            cos,
            sin,
            q_out,
            k_out,
            t,
            h,
            hkv,
            *q.stride()[:3],
            *k.stride()[:3],
            cos_b,
            cos.stride(1),
            sin_b,
            sin.stride(1),
            HALF=d // 2,
            BLOCK_H=cfg.block_h,
            BLOCK_D=triton.next_power_of_2(d // 2),
            PDL=pdl,
            num_warps=cfg.num_warps,
            enable_fp_fusion=False,  # no FMA: torch rounds each product before the sum (fp32)
            launch_pdl=bool(pdl),
        )
    return q_out, k_out
