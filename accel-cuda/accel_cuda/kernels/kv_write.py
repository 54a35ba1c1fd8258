"""The KV cache write in Triton: new K and V tokens quantized and stored at their positions, in one launch.

Op kv_cache_write (accel.runtime.kv_ops.kv_cache_write is the contract and the reference): K and V [B, H, T, D]
quantized per (token, head) into the cache format and stored at positions[b, t] of stores [B', H, S, c]. The torch
reference runs ~11 kernels per tensor (fp32 cast, abs, amax, division, where, round, clamp, cast, then a scatter
per stored tensor), ~22 per layer and write: at decode that is launch time, not bandwidth. Here one program per
(row b, KV head h, block of BLOCK_T new tokens) loads the block's K tile [BLOCK_T, D] into registers, reduces
each token's scale there, stores codes, scale and zero point at the tokens' positions, then does the same for V.

Codes, scales and zero points equal torch's kv_quantize on the same device bit for bit (quantization decides
which value a token keeps for the rest of the sequence; "close" is a different cache):
- max |x|, min x, max x: exact in any order.
- x / s with a tensor s: exact division (div_rn), as torch divides tensors on both devices.
- s = max|x| / qmax and int4's (max x - min x) / 15 divide by a Python scalar: the CPU divides exactly, torch on
  CUDA multiplies by the scalar's fp32 reciprocal (RECIP, set for CUDA tensors; 1 / 127, 1 / 448 and 1 / 15 are
  the same in fp32 whether computed in fp32 or rounded from double).
- round(y): half to even, (y + 1.5 * 2^23) - 1.5 * 2^23 for |y| <= 2^22 (int8 clamps first; int4's |y| stays
  below 2^17 because s >= max|x| * 2^-16, rounded to fp16).
- fp8: e4m3fn bits by integer arithmetic (_fp8_bits, round to nearest even), stored through a uint8 view: one code
  path on every card and under the interpreter, whose float -> fp8 conversion carries mantissa overflow wrongly.
- int4: s rounded to fp16 (round to nearest even, as .to(float16)); zp = clamp(-8 - round(min / s), -2048, 2048);
  codes = clamp(round(x / s) + zp, -8, 7), channel 2j in the low nibble of byte j and 2j + 1 in the high one
  (kv_quant.pack_int4): the even and odd channels load as two [.., 16] halves of each 32-channel group.
- "none": the values are copied as they are (the kernel takes K/V already in the store's dtype).
K/V holding NaN or inf are outside this promise (torch's amax propagates NaN; Triton's max need not).

Positions are read on the device, so a CUDA graph can capture the write and replay it with new positions; a
position outside [0, S) is skipped instead of written out of bounds (the contract leaves it undefined). Layouts the
kernel does not take (non-unit channel stride, "none" with a dtype cast, int4 zero points strided unlike their
scales, head_dim > 1024) run the reference.

Launched with programmatic dependent launch on Hopper (pdl.py): each program waits for the previous kernel before
it reads the positions, and lets the next one launch once its K tokens are written.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.kv_ops import KV_INT4_GROUP, check_kv_cache_write
from accel.runtime.kv_ops import kv_cache_write as reference
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release

__all__ = ["WriteConfig", "kv_cache_write", "plan"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_FMT_CODE = {"none": 0, "int8": 1, "fp8": 2, "int4": 3}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_BLOCK_D = 1024
ROUND = tl.constexpr(12582912.0)  # 1.5 * 2^23: y + ROUND - ROUND rounds fp32 |y| <= 2^22 half to even
TINY = tl.constexpr(1.1754943508222875e-38)  # torch.finfo(float32).tiny: kv_quantize's scale for an all-zero token
RANGE_FLOOR = tl.constexpr(2.0**-16)  # kv_ops._RANGE_FLOOR
GROUP = tl.constexpr(KV_INT4_GROUP)  # channels of one int4 scale / zero point
HALF_GROUP = tl.constexpr(KV_INT4_GROUP // 2)  # bytes of one int4 group: 16 even and 16 odd channels


@triton.jit
def _round_even(y):
    """round(y) half to even for fp32 |y| <= 2^22 (torch.round)."""
    return (y + ROUND) - ROUND


@triton.jit
def _fp8_bits(y):
    """fp32 y with |y| <= 448 -> its float8_e4m3fn bits (int32, 0..255), rounded to nearest even as torch converts.

    Normal range (|y| >= 2^-6): keep 3 of the 23 mantissa bits, adding 2^19 - 1 plus the kept lsb rounds the dropped
    20 to nearest even (a carry moves into the exponent, as it should); rebias the exponent from 127 to 7.
    Subnormals (|y| < 2^-6): multiples of 2^-9, so round(|y| * 2^9) is the code (8 is 2^-6, the first normal)."""
    bits = y.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    mag = bits & 0x7FFFFFFF
    normal = ((mag + 0x7FFFF + ((mag >> 20) & 1)) >> 20) - ((127 - 7) << 3)
    a = tl.abs(y)
    subnormal = _round_even(a * 512.0).to(tl.int32)
    return tl.where(a < 0.015625, subnormal, normal) | sign


@triton.jit
def _write_scaled(
    x_ptr,
    stride_xt,
    c_ptr,
    s_ptr,
    stride_cs,
    stride_ss,
    offs_t,
    pos,
    ok,
    D: tl.constexpr,
    FMT: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """none / int8 / fp8 for one tensor: tokens offs_t [BLOCK_T] of x (row/head base x_ptr) -> codes and scales at
    rows `pos` of the store (base c_ptr / s_ptr), where `ok`."""
    offs_d = tl.arange(0, BLOCK_D)
    mask = ok[:, None] & (offs_d < D)[None, :]
    x = tl.load(x_ptr + offs_t[:, None] * stride_xt + offs_d[None, :], mask=mask, other=0.0)  # [BLOCK_T, BLOCK_D]
    dst = c_ptr + pos[:, None] * stride_cs + offs_d[None, :]
    if FMT == 0:
        tl.store(dst, x, mask=mask)
    else:
        qmax: tl.constexpr = 127.0 if FMT == 1 else 448.0
        x = x.to(tl.float32)
        amax = tl.max(tl.abs(x), axis=1)  # [BLOCK_T]
        # s = max|x| / qmax: times the fp32 reciprocal on CUDA (torch's division by a scalar there), else exact.
        scale = amax * (1.0 / qmax) if RECIP else tl.math.div_rn(amax, qmax)
        scale = tl.where(scale > 0, scale, TINY)
        y = tl.math.div_rn(x, scale[:, None])
        y = tl.minimum(tl.maximum(y, -qmax), qmax)
        codes = _round_even(y).to(tl.int8) if FMT == 1 else _fp8_bits(y).to(tl.uint8)
        tl.store(dst, codes, mask=mask)
        tl.store(s_ptr + pos * stride_ss, scale, mask=ok)


@triton.jit
def _write_int4(
    x_ptr,
    stride_xt,
    c_ptr,
    s_ptr,
    z_ptr,
    stride_cs,
    stride_ss,
    offs_t,
    pos,
    ok,
    D: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_G: tl.constexpr,
):
    """int4 for one tensor: per token and 32-channel group g, s = fp16(max((max - min) / 15, max|x| * 2^-16)),
    zp = clamp(-8 - round(min / s), -2048, 2048), codes = clamp(round(x / s) + zp, -8, 7); byte j of a group holds
    channel 2j (low nibble) and 2j + 1 (high)."""
    offs_g = tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, HALF_GROUP)
    gmask = ok[:, None] & (offs_g < D // GROUP)[None, :]  # [BLOCK_T, BLOCK_G]
    mask = gmask[:, :, None]
    even = offs_g[None, :, None] * GROUP + 2 * offs_j[None, None, :]  # [1, BLOCK_G, 16]: channel 2j of each group
    rows = x_ptr + offs_t[:, None, None] * stride_xt
    xe = tl.load(rows + even, mask=mask, other=0.0).to(tl.float32)  # [BLOCK_T, BLOCK_G, 16]
    xo = tl.load(rows + even + 1, mask=mask, other=0.0).to(tl.float32)
    lo = tl.minimum(tl.min(xe, axis=2), tl.min(xo, axis=2))  # [BLOCK_T, BLOCK_G]
    hi = tl.maximum(tl.max(xe, axis=2), tl.max(xo, axis=2))
    amax = tl.maximum(tl.max(tl.abs(xe), axis=2), tl.max(tl.abs(xo), axis=2))
    spread = (hi - lo) * (1.0 / 15.0) if RECIP else tl.math.div_rn(hi - lo, 15.0)
    scale = tl.maximum(spread, amax * RANGE_FLOOR)
    scale16 = tl.where(scale > 0, scale, 1.0).to(tl.float16)  # the stored fp16 grid
    scale = scale16.to(tl.float32)
    zero = tl.minimum(tl.maximum(-8.0 - _round_even(tl.math.div_rn(lo, scale)), -2048.0), 2048.0)
    ce = _round_even(tl.math.div_rn(xe, scale[:, :, None])) + zero[:, :, None]
    co = _round_even(tl.math.div_rn(xo, scale[:, :, None])) + zero[:, :, None]
    ce = tl.minimum(tl.maximum(ce, -8.0), 7.0).to(tl.int32)
    co = tl.minimum(tl.maximum(co, -8.0), 7.0).to(tl.int32)
    packed = ((ce & 15) | ((co & 15) << 4)).to(tl.uint8)
    dst = c_ptr + pos[:, None, None] * stride_cs + offs_g[None, :, None] * HALF_GROUP + offs_j[None, None, :]
    tl.store(dst, packed, mask=mask)
    soffs = pos[:, None] * stride_ss + offs_g[None, :]
    tl.store(s_ptr + soffs, scale16, mask=gmask)
    tl.store(z_ptr + soffs, zero.to(tl.float16), mask=gmask)


# Sizes that only bound loops and masks are not specialized (fewer compiles across batch sizes and prompt lengths).
@triton.jit(do_not_specialize=["H", "T", "S", "NT"])
def _kv_write_kernel(
    k_ptr,
    v_ptr,
    pos_ptr,
    kc_ptr,
    ks_ptr,
    kz_ptr,
    vc_ptr,
    vs_ptr,
    vz_ptr,
    H,
    T,
    S,
    NT,
    stride_kb,
    stride_kh,
    stride_kt,
    stride_vb,
    stride_vh,
    stride_vt,
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
    D: tl.constexpr,
    FMT: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_G: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (b, h, token block): K then V of BLOCK_T new tokens of row b, head h, stored at their positions.
    PDL: pdl.py's mode (the next kernel may launch once K is written)."""
    pid = tl.program_id(0)  # (b * H + h) * NT + token block
    bh = pid // NT
    b = (bh // H).to(tl.int64)
    h = (bh % H).to(tl.int64)
    offs_t = (pid % NT) * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = offs_t < T
    pdl_enter(PDL)
    pos = tl.load(pos_ptr + b * stride_pb + offs_t * stride_pt, mask=t_mask, other=0).to(tl.int64)
    ok = t_mask & (pos >= 0) & (pos < S)  # out-of-range positions are skipped, never written out of bounds
    pos = tl.where(ok, pos, 0)
    k_rows = k_ptr + b * stride_kb + h * stride_kh
    v_rows = v_ptr + b * stride_vb + h * stride_vh
    kc = kc_ptr + b * stride_kcb + h * stride_kch
    vc = vc_ptr + b * stride_vcb + h * stride_vch
    ks = ks_ptr + b * stride_ksb + h * stride_ksh
    vs = vs_ptr + b * stride_vsb + h * stride_vsh
    if FMT == 3:
        kz = kz_ptr + b * stride_ksb + h * stride_ksh
        vz = vz_ptr + b * stride_vsb + h * stride_vsh
        _write_int4(k_rows, stride_kt, kc, ks, kz, stride_kcs, stride_kss, offs_t, pos, ok, D, RECIP, BLOCK_G)
        pdl_release(PDL)
        _write_int4(v_rows, stride_vt, vc, vs, vz, stride_vcs, stride_vss, offs_t, pos, ok, D, RECIP, BLOCK_G)
    else:
        _write_scaled(k_rows, stride_kt, kc, ks, stride_kcs, stride_kss, offs_t, pos, ok, D, FMT, RECIP, BLOCK_D)
        pdl_release(PDL)
        _write_scaled(v_rows, stride_vt, vc, vs, stride_vcs, stride_vss, offs_t, pos, ok, D, FMT, RECIP, BLOCK_D)


@dataclass(frozen=True)
class WriteConfig:
    """One launch: new tokens per program (a power of two) and Triton's warps per program."""

    block_t: int
    num_warps: int


def plan(tokens: int, head_dim: int) -> WriteConfig:
    """About 1024 channels per program (8 tokens of head_dim 128) so that a prefill of thousands of tokens runs in
    programs of a few hundred threads each, and one token per program at decode (the batch x heads programs are
    the parallelism there); one warp per 256 channels, at least 1 and at most 4."""
    block_d = triton.next_power_of_2(head_dim)
    block_t = min(triton.next_power_of_2(max(tokens, 1)), max(1, 1024 // block_d))
    return WriteConfig(block_t=block_t, num_warps=max(1, min(4, block_t * block_d // 256)))


def _supported(
    k: torch.Tensor,
    v: torch.Tensor,
    stores: tuple[torch.Tensor | None, ...],
    fmt: str,
) -> bool:
    """The layouts the kernel takes directly (anything else runs the reference): the module docstring."""
    if not (k.is_cuda or INTERPRET) or k.dtype not in _DTYPES or v.dtype not in _DTYPES:
        return False
    if k.stride(-1) != 1 or v.stride(-1) != 1 or triton.next_power_of_2(k.shape[-1]) > _MAX_BLOCK_D:
        return False
    k_codes, k_scale, k_zero, v_codes, v_scale, v_zero = stores
    if fmt == "none":
        return k.dtype == k_codes.dtype and v.dtype == v_codes.dtype and k_codes.stride(-1) == v_codes.stride(-1) == 1
    if k_codes.stride(-1) != 1 or v_codes.stride(-1) != 1:
        return False
    if fmt == "int4":
        assert k_scale is not None and v_scale is not None and k_zero is not None and v_zero is not None
        return (
            k_scale.stride(-1) == v_scale.stride(-1) == 1
            and k_zero.stride() == k_scale.stride()
            and v_zero.stride() == v_scale.stride()
        )
    return True


def kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
    *,
    config: WriteConfig | None = None,
) -> None:
    """Triton KV cache write; same contract as accel.runtime.kv_ops.kv_cache_write (the reference), which runs
    instead for layouts the kernel does not take (module docstring). `config` overrides the plan."""
    check_kv_cache_write(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)
    stores = (k_codes, k_scale, k_zero, v_codes, v_scale, v_zero)
    if not _supported(k, v, stores, fmt):
        reference(k, v, positions, *stores, fmt)
        return
    b, h, t, d = k.shape
    if b == 0 or t == 0:
        return
    cfg = config or plan(t, d)
    # Absent stores: any tensor stands in (the format's branch never touches it); fp8 codes are written as bytes.
    k_scale = k_scale if k_scale is not None else k_codes
    v_scale = v_scale if v_scale is not None else v_codes
    k_zero = k_zero if k_zero is not None else k_scale
    v_zero = v_zero if v_zero is not None else v_scale
    kc = k_codes.view(torch.uint8) if fmt == "fp8" else k_codes
    vc = v_codes.view(torch.uint8) if fmt == "fp8" else v_codes
    n_blocks = triton.cdiv(t, cfg.block_t)
    block_d = triton.next_power_of_2(d)
    pdl = pdl_mode(k.device)
    with torch.cuda.device(k.device) if k.is_cuda else contextlib.nullcontext():
        _kv_write_kernel[(b * h * n_blocks,)](
            k,
            v,
            positions,
            kc,
            k_scale,
            k_zero,
            vc,
            v_scale,
            v_zero,
            h,
            t,
            k_codes.shape[2],
            n_blocks,
            *k.stride()[:3],
            *v.stride()[:3],
            *positions.stride(),
            *k_codes.stride()[:3],
            *k_scale.stride()[:3],
            *v_codes.stride()[:3],
            *v_scale.stride()[:3],
            D=d,
            FMT=_FMT_CODE[fmt],
            RECIP=k.is_cuda,
            BLOCK_T=cfg.block_t,
            BLOCK_D=block_d,
            BLOCK_G=triton.next_power_of_2(max(1, d // KV_INT4_GROUP)),
            PDL=pdl,
            num_warps=cfg.num_warps,
            launch_pdl=bool(pdl),
        )
