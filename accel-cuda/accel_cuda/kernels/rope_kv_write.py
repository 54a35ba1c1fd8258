"""RoPE fused with the KV cache write in Triton: q rotated, k rotated and stored with v, in one launch.

Op rotary_kv_cache_write (accel.runtime.rope_kv_ops.rotary_kv_cache_write is the contract and the reference): q
[B, T, H, D] rotated into a new contiguous tensor (returned); k [B, T, Hkv, D] rotated and, with v [B, T, Hkv, D],
quantized per (token, head) into the cache format and stored at positions[b, t] of stores [B', Hkv, S, c]. That is
rope.py's launch followed by kv_write.py's, once per layer of every decode step; fused, the pair takes 1.1-1.5 us a
layer instead of 2.3-3.1 at batch 1 on an H200 (plan's docstring), and the rotated k is never handed back to torch.

Grid (B * T tokens, ceil(H / BLOCK_H) + 2 ceil(Hkv / BLOCK_KV) head blocks): program (n, j) works on heads of token
n = b * T + t: BLOCK_H of q's for the first ceil(H / BLOCK_H) blocks, then BLOCK_KV of k's, then of v's.
- q: rope._rotate_heads into the output, as rope.py does.
- k: rope._rotate_heads into a scratch row (k_rot[n], [Hkv, D] in k's dtype: exactly the reference's rotated k), a CTA
  barrier, then kv_write's quantize-and-store from that row. The round trip stays in the SM's L1 (BLOCK_KV * D
  elements), and in exchange both halves are the unfused kernels' own code.
- v: kv_write's quantize-and-store straight from the qkv output (the same store code as k's, its pointers picked).
kv_write's helpers (_write_scaled, _write_int4) take a block of rows of one head and store row i at position pos[i];
here the rows are the block's heads of one token, stored at head pos[i] = h of the store's (b, positions[b, t]) entry,
so the same code serves. A position outside [0, S) is skipped, as kv_write.py skips it.

Bit-exact where the unfused kernels are (rope.py's and kv_write.py's docstrings): q's and k's products and sums rounded
as torch rounds them (fp fusion off; zeros' signs as torch makes them), codes / scales / zero points as kv_quantize
makes them on the same device. Under the interpreter fp32 and fp16 are exact; bf16's rotation is truncated (rope.py),
and the cache then holds exactly the quantization of that rotated k.

Layouts the kernel does not take run the reference: those rope.py or kv_write.py leave to theirs (a strided last
dimension, dtypes other than fp16 / bf16 / fp32, D > rope.MAX_HEAD_DIM, empty tensors, "none" with a dtype cast, int4
zero points strided unlike their scales, tensors off the GPU unless TRITON_INTERPRET=1), and v in a dtype other than
q's (the model's k and v are one qkv output).

Launched with programmatic dependent launch on Hopper (pdl.py): every program waits before its first load; a q program
lets the next kernel launch before its stores (as rope.py), a k or v program once its heads are stored.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.kv_ops import KV_INT4_GROUP
from accel.runtime.rope_kv_ops import check_rotary_kv_cache_write
from accel.runtime.rope_kv_ops import rotary_kv_cache_write as reference
from accel_cuda.kernels import kv_write, rope
from accel_cuda.kernels.kv_write import _write_int4, _write_scaled
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.rope import _rotate_heads

__all__ = ["RopeKVConfig", "plan", "rotary_kv_cache_write"]


@triton.jit
def _store_heads(
    x_row,
    stride_xh,
    c_row,
    s_row,
    z_row,
    stride_ch,
    stride_sh,
    heads,
    ok,
    D: tl.constexpr,
    FMT: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """Heads `heads` of one token (x_row: its head 0, head stride stride_xh) quantized into `FMT` and stored at those
    heads of one store position (c_row / s_row / z_row: its head 0; head strides stride_ch / stride_sh), where `ok`:
    kv_write's helpers, with the heads as their rows."""
    at = heads.to(tl.int64)  # head offsets in the store: S * D per head passes 2^31 within 64 heads of a long cache
    if FMT == 3:
        _write_int4(x_row, stride_xh, c_row, s_row, z_row, stride_ch, stride_sh, heads, at, ok, D, RECIP, BLOCK_G)
    else:
        _write_scaled(x_row, stride_xh, c_row, s_row, stride_ch, stride_sh, heads, at, ok, D, FMT, RECIP, BLOCK_D)


# The token count T only splits n into (b, t), S only bounds positions: neither is specialized (a cache size or token
# count compiles nothing new; the plan's block_kv alone varies with the token count).
@triton.jit(do_not_specialize=["T", "S"])
def _rope_kv_write_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    cos_ptr,
    sin_ptr,
    pos_ptr,
    q_out,
    k_rot,
    kc_ptr,
    ks_ptr,
    kz_ptr,
    vc_ptr,
    vs_ptr,
    vz_ptr,
    T,
    H,
    HKV,
    S,
    stride_qb,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_cb,
    stride_ct,
    stride_sb,
    stride_st,
    stride_pb,
    stride_pt,
    stride_kcb,
    stride_kch,
    stride_kcs,
    stride_ksb,
    stride_ksh,
    stride_kss,
    stride_vcb,
    stride_vch,
    stride_vcs,
    stride_vsb,
    stride_vsh,
    stride_vss,
    HALF: tl.constexpr,
    FMT: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_KV: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (n, j): token n = b * T + t, head block j of q's heads, then k's, then v's (module docstring); PDL:
    pdl.py's mode."""
    n = tl.program_id(0).to(tl.int64)  # B * T * H * D may pass 2^31 in a long prefill
    j = tl.program_id(1)
    b = n // T
    t = n % T
    cos_row = cos_ptr + b * stride_cb + t * stride_ct  # stride_cb 0: one table for the batch
    sin_row = sin_ptr + b * stride_sb + t * stride_st
    q_blocks = tl.cdiv(H, BLOCK_H)
    kv_blocks = tl.cdiv(HKV, BLOCK_KV)
    pdl_enter(PDL)
    if j < q_blocks:
        src = q_ptr + b * stride_qb + t * stride_qt
        _rotate_heads(
            src, q_out + n * H * (2 * HALF), cos_row, sin_row, j * BLOCK_H, H, stride_qh, HALF, BLOCK_H, BLOCK_HALF, PDL
        )
    else:
        # k and v programs share the store; a k program first rotates its heads into the scratch row k_rot[n] (in k's
        # dtype, rounded as the reference rounds its k_rot), and the barrier makes every thread's rotated heads visible
        # to the threads that read them back.
        is_k = j < q_blocks + kv_blocks
        h0 = ((j - q_blocks) % kv_blocks) * BLOCK_KV
        heads = h0 + tl.arange(0, BLOCK_KV)
        pos = tl.load(pos_ptr + b * stride_pb + t * stride_pt).to(tl.int64)
        pos_ok = (pos >= 0) & (pos < S)  # an out-of-range position is skipped, never written out of bounds
        pos = tl.where(pos_ok, pos, 0)
        k_row = k_rot + n * HKV * (2 * HALF)
        if is_k:
            src = k_ptr + b * stride_kb + t * stride_kt
            _rotate_heads(src, k_row, cos_row, sin_row, h0, HKV, stride_kh, HALF, BLOCK_KV, BLOCK_HALF, 0)
            tl.debug_barrier()
        x_row = tl.where(is_k, k_row, v_ptr + b * stride_vb + t * stride_vt)
        c_row = tl.where(is_k, kc_ptr + b * stride_kcb + pos * stride_kcs, vc_ptr + b * stride_vcb + pos * stride_vcs)
        at = tl.where(is_k, b * stride_ksb + pos * stride_kss, b * stride_vsb + pos * stride_vss)
        s_row, z_row = tl.where(is_k, ks_ptr, vs_ptr) + at, tl.where(is_k, kz_ptr, vz_ptr) + at
        stride_xh, stride_ch, stride_sh = (
            tl.where(is_k, 2 * HALF, stride_vh),
            tl.where(is_k, stride_kch, stride_vch),
            tl.where(is_k, stride_ksh, stride_vsh),
        )
        ok = (heads < HKV) & pos_ok
        _store_heads(
            x_row,
            stride_xh,
            c_row,
            s_row,
            z_row,
            stride_ch,
            stride_sh,
            heads,
            ok,
            2 * HALF,
            FMT,
            RECIP,
            BLOCK_D,
            BLOCK_G,
        )
        pdl_release(PDL)


@dataclass(frozen=True)
class RopeKVConfig:
    """One launch: q heads per q program, k (and v) heads per k (v) program (powers of two), Triton's warps per
    program."""

    block_h: int
    block_kv: int
    num_warps: int


_KV_PROGRAMS = 256  # k (and v) programs a launch aims for at most, while a program holds more than one head


def plan(heads: int, kv_heads: int, head_dim: int, tokens: int, fmt: str) -> RopeKVConfig:
    """rope.plan's q heads per program (about 1024 elements); k / v heads per program: as many for "none" (a copy),
    else one, or as few as keep the k programs near 256 (two an SM; at Llama-3-8B shapes, batch 64 takes 2); one warp
    per 256 channels of a k / v program, 1 to 4 (kv_write.plan's rule).

    Measured on an H200 (32 layers' launches in a CUDA graph with PDL, Llama-3-8B shapes, bf16; us a layer, unfused
    rope + kv_write in brackets): batch 1: none 1.11 (2.28), int8 1.49 (3.08), fp8 1.50 (3.11), int4 1.51 (3.08);
    batch 16: 1.28 (2.66), 1.69 (3.19), 1.70 (3.33), 1.82 (3.35); batch 64: 1.48 (3.05), 2.28 (3.57), 2.28 (3.65),
    2.31 (3.74). A quantized k program reduces its heads after a barrier: one head per program keeps that chain short
    (8 heads a program: int8 1.8 us at batch 1 at best). The token count only picks block_kv: a few compiles (1, 2,
    4, 8 heads) serve every batch size and prompt length."""
    block_h = rope.plan(max(heads, kv_heads), head_dim).block_h
    width = triton.next_power_of_2(head_dim)
    wanted = triton.next_power_of_2(triton.cdiv(max(tokens, 1) * kv_heads, _KV_PROGRAMS))
    block_kv = min(block_h if fmt == "none" else wanted, block_h, triton.next_power_of_2(kv_heads))
    return RopeKVConfig(block_h=block_h, block_kv=block_kv, num_warps=max(1, min(4, block_kv * width // 256)))


def rotary_kv_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
    *,
    config: RopeKVConfig | None = None,
) -> torch.Tensor:
    """Triton RoPE and KV cache write in one launch; same contract as accel.runtime.rope_kv_ops.rotary_kv_cache_write
    (the reference), which runs instead for layouts the kernel does not take (module docstring). Returns q rotated, a
    new contiguous tensor (NaN-filled first under rope.POISON); `config` overrides the plan."""
    stores = (k_codes, k_scale, k_zero, v_codes, v_scale, v_zero)
    check_rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt)
    taken = rope._supported(q, k, cos, sin) and kv_write._supported(k, v, stores, fmt) and v.dtype == q.dtype
    taken = taken and v.device == q.device
    if not taken:
        return reference(q, k, v, cos, sin, positions, *stores, fmt)
    b, t, h, d = q.shape
    hkv = k.shape[2]
    q_out, k_rot = rope._new_output(q), rope._new_output(k)
    cfg = config or plan(h, hkv, d, b * t, fmt)
    # Absent stores: any tensor stands in (the format's branch never touches it); fp8 codes are written as bytes.
    k_scale, v_scale = (k_codes if s is None else s for s in (k_scale, v_scale))
    k_zero, v_zero = (s if z is None else z for z, s in ((k_zero, k_scale), (v_zero, v_scale)))
    kc, vc = (c.view(torch.uint8) if fmt == "fp8" else c for c in (k_codes, v_codes))
    # A table of batch 1 serves every row: batch stride 0.
    cos_b, sin_b = (0 if x.shape[0] == 1 else x.stride(0) for x in (cos, sin))
    grid = (b * t, triton.cdiv(h, cfg.block_h) + 2 * triton.cdiv(hkv, cfg.block_kv))
    pdl = pdl_mode(q.device)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        _rope_kv_write_kernel[grid](
            q,
            k,
            v,
            cos,
            sin,
            positions,
            q_out,
            k_rot,
            kc,
            k_scale,
            k_zero,
            vc,
            v_scale,
            v_zero,
            t,
            h,
            hkv,
            k_codes.shape[2],
            *q.stride()[:3],
            *k.stride()[:3],
            *v.stride()[:3],
            cos_b,
            cos.stride(1),
            sin_b,
            sin.stride(1),
            *positions.stride(),
            *k_codes.stride()[:3],
            *k_scale.stride()[:3],
            *v_codes.stride()[:3],
            *v_scale.stride()[:3],
            HALF=d // 2,
            FMT=kv_write._FMT_CODE[fmt],
            RECIP=q.is_cuda,  # torch divides by a scalar as a multiplication by its reciprocal on CUDA (kv_write.py)
            BLOCK_H=cfg.block_h,
            BLOCK_KV=cfg.block_kv,
            BLOCK_HALF=triton.next_power_of_2(d // 2),
            BLOCK_D=triton.next_power_of_2(d),
            BLOCK_G=triton.next_power_of_2(max(1, d // KV_INT4_GROUP)),
            PDL=pdl,
            num_warps=cfg.num_warps,
            enable_fp_fusion=False,  # no FMA: torch rounds each product before the sum (fp32)
            launch_pdl=bool(pdl),
        )
    return q_out
