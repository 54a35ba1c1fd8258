"""Flash-decoding in Triton over accel's static KV cache (accel.runtime.kv_ops), in all four storage formats.

out = softmax(q k^T * sm_scale) v for T new queries per row that sit at the end of the row's seq_lens[b] cached
tokens (causal among themselves). Two launches:

1. Split: program (b, kv head, split, row block) takes CHUNK consecutive cache positions of one KV head and
   every query row of that head's group (the G = hq / hkv query heads x T new tokens, G*T rows, padded to 16
   for tl.dot), so K and V are read once per group. It dequantizes each [BLOCK_N, D] tile in registers and
   runs an online softmax in base 2 (sm_scale * log2 e folded into the scores), writing the normalized
   partial output and its log-sum-exp per row to an fp32 workspace. Splits past a row's length return at once.
2. Reduce: one program per (b, query head, t) combines the live splits: out = sum_i 2^(lse_i - m) o_i /
   sum_i 2^(lse_i - m). With one split the first launch writes the output directly and there is no second.

Dequantization (x^ = (q - zp) * s per kv_ops' formats) stays exact where it can:
- int8 / fp8: codes convert exactly to the dot dtype; K's per-token scale multiplies the score column
  (q . k^_n = s_n (q . codes_n)) and V's multiplies p before the second dot (sum_n p_n s_n codes_n).
- int4: byte j of a token holds channels 2j (low nibble) and 2j+1 (high). Instead of interleaving the nibbles,
  the kernel splits q into its even and odd channels: q . k = q_even . k_low + q_odd . k_high, two dots of
  depth D/2, and accumulates the output's even and odd channels separately. A nibble n becomes the float
  2^23 + (n ^ 8) with one logical op ((n & 15) ^ 0x4B000008 read as fp32), minus (2^23 + 8 + zp) exactly,
  times s, then rounded once to the dot dtype.

Position handling: query t of row b is at p = seq_lens[b] - T + t and sees positions <= p. A split that is live
for a row may hold none of a query's positions (T > 1): that query's partial has lse = -inf and output 0.
The number of splits is fixed by the cache capacity (not the lengths), so the launch needs no host sync and a
CUDA graph can capture it.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.kv_ops import KV_FORMATS, KV_INT4_GROUP
from accel.runtime.kv_ops import cached_attention as reference

__all__ = ["AttnConfig", "cached_attention", "plan"]

# Tests set this to fill the workspace and output with NaN, so an element a kernel failed to write shows.
POISON = False
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634
_FMT_CODE = {"none": 0, "int8": 1, "fp8": 2, "int4": 3}
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
KV_INT4_GROUP_C = tl.constexpr(KV_INT4_GROUP)
_INT4_GROUP_BYTES = tl.constexpr(KV_INT4_GROUP // 2)  # bytes of one int4 group along head_dim


@triton.jit
def _int4_half(packed, s, zs, dt: tl.constexpr):
    """One nibble of each byte as (code - zp) * s in dt; `packed` int32 holds it in bits 0..3, zs = 2^23 + 8 + zp.
    (n & 15) ^ 0x4B000008 is the fp32 2^23 + (n ^ 8), and n ^ 8 = code + 8, so subtracting zs leaves code - zp
    exactly."""
    f = ((packed & 15) ^ 0x4B000008).to(tl.float32, bitcast=True)
    return ((f - zs) * s).to(dt)


@triton.jit
def _int4_tile(
    ptr, s_ptr, z_ptr, offs_n, n_mask, stride_n, stride_sn, D: tl.constexpr, BLOCK_G: tl.constexpr, dt: tl.constexpr
):
    """Low and high nibbles of an int4 tile, dequantized, each [BLOCK_N, BLOCK_G * 16]: bytes loaded as
    [BLOCK_N, group, 16] so that each group's scale and zero point load once and broadcast over its 16 bytes."""
    BLOCK_N: tl.constexpr = offs_n.shape[0]
    offs_g = tl.arange(0, BLOCK_G)
    offs_j = tl.arange(0, _INT4_GROUP_BYTES)
    mask2 = n_mask[:, None] & (offs_g < D // KV_INT4_GROUP_C)[None, :]
    bytes_ = offs_n[:, None, None] * stride_n + (offs_g * _INT4_GROUP_BYTES)[None, :, None] + offs_j[None, None, :]
    packed = tl.load(ptr + bytes_, mask=mask2[:, :, None], other=0).to(tl.int32)
    soffs = offs_n[:, None] * stride_sn + offs_g[None, :]
    s = tl.load(s_ptr + soffs, mask=mask2, other=0.0).to(tl.float32)[:, :, None]
    zs = tl.load(z_ptr + soffs, mask=mask2, other=0.0).to(tl.float32)[:, :, None] + 8388616.0
    lo = tl.reshape(_int4_half(packed, s, zs, dt), (BLOCK_N, BLOCK_G * _INT4_GROUP_BYTES))
    hi = tl.reshape(_int4_half(packed >> 4, s, zs, dt), (BLOCK_N, BLOCK_G * _INT4_GROUP_BYTES))
    return lo, hi


# Sizes that only bound loops and masks are not specialized (fewer compiles); strides are, for 16-byte loads.
@triton.jit(do_not_specialize=["sm_scale", "cap", "HKV", "R", "T", "CHUNK", "SPLITS"])
def _split_kernel(
    q_ptr,
    k_ptr,
    ks_ptr,
    kz_ptr,
    v_ptr,
    vs_ptr,
    vz_ptr,
    lens_ptr,
    o_ptr,
    lse_ptr,
    out_ptr,
    sm_scale,
    cap,
    HKV,
    R,
    T,
    CHUNK,
    SPLITS,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_ksb,
    stride_ksh,
    stride_ksn,
    stride_vb,
    stride_vh,
    stride_vn,
    stride_vsb,
    stride_vsh,
    stride_vsn,
    D: tl.constexpr,
    FMT: tl.constexpr,
    DIRECT: tl.constexpr,
    PRECISION: tl.constexpr,
    F16: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    pid_r = tl.program_id(2)
    b = pid_bh // HKV
    h = pid_bh % HKV
    seq_len = tl.load(lens_ptr + b).to(tl.int32)
    start = split * CHUNK
    if start < seq_len:
        end = tl.minimum(start + CHUNK, seq_len)
        dt = q_ptr.dtype.element_ty
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        r_mask = rows < R
        qpos = seq_len - T + rows % T  # [BLOCK_R]: each row's position; it sees keys at positions <= qpos
        q_rows = q_ptr + (pid_bh.to(tl.int64) * R + rows[:, None]) * D  # q [b, hkv, R, D] contiguous
        b64 = b.to(tl.int64)
        k_base = k_ptr + b64 * stride_kb + h * stride_kh
        v_base = v_ptr + b64 * stride_vb + h * stride_vh
        ks_base = ks_ptr + b64 * stride_ksb + h * stride_ksh
        vs_base = vs_ptr + b64 * stride_vsb + h * stride_vsh
        qk_scale = sm_scale * 1.4426950408889634
        m_i = tl.full((BLOCK_R,), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R,), tl.float32)
        if FMT == 3:
            # int4: even and odd channels apart (module docstring).
            BLOCK_DH: tl.constexpr = BLOCK_D // 2
            BLOCK_G: tl.constexpr = BLOCK_DH // _INT4_GROUP_BYTES
            offs_h = tl.arange(0, BLOCK_DH)
            h_mask = offs_h < D // 2
            qm = r_mask[:, None] & h_mask[None, :]
            q_even = tl.load(q_rows + 2 * offs_h[None, :], mask=qm, other=0.0)
            q_odd = tl.load(q_rows + 2 * offs_h[None, :] + 1, mask=qm, other=0.0)
            kz_base = kz_ptr + b64 * stride_ksb + h * stride_ksh
            vz_base = vz_ptr + b64 * stride_vsb + h * stride_vsh
            acc_even = tl.zeros((BLOCK_R, BLOCK_DH), tl.float32)
            acc_odd = tl.zeros((BLOCK_R, BLOCK_DH), tl.float32)
        else:
            offs_d = tl.arange(0, BLOCK_D)
            d_mask = offs_d < D
            q = tl.load(q_rows + offs_d[None, :], mask=r_mask[:, None] & d_mask[None, :], other=0.0)
            if F16:
                # fp8 codes convert to fp16 in one instruction per pair (bf16 takes a second, quarter-rate one):
                # dot in fp16 with each query row scaled into [-1, 1] (its absmax multiplies the scores back).
                q32 = q.to(tl.float32)
                q_amax = tl.maximum(tl.max(tl.abs(q32), axis=1), 1e-30)
                q = (q32 / q_amax[:, None]).to(tl.float16)
            acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < end
            if FMT == 3:
                k_lo, k_hi = _int4_tile(k_base, ks_base, kz_base, offs_n, n_mask, stride_kn, stride_ksn, D, BLOCK_G, dt)
                s = tl.dot(q_even, tl.trans(k_lo), input_precision=PRECISION)
                s = tl.dot(q_odd, tl.trans(k_hi), s, input_precision=PRECISION)
                s = s * qk_scale
            else:
                kt = tl.load(
                    k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :],
                    other=0.0,
                )
                if F16:
                    s = tl.dot(q, tl.trans(kt.to(tl.float16)))
                    s = s * q_amax[:, None]
                else:
                    s = tl.dot(q, tl.trans(kt.to(dt)), input_precision=PRECISION)
                if FMT == 0:
                    s = s * qk_scale
                else:
                    k_scale = tl.load(ks_base + offs_n * stride_ksn, mask=n_mask, other=0.0)
                    s = s * (k_scale * qk_scale)[None, :]
            s = tl.where(n_mask[None, :] & (offs_n[None, :] <= qpos[:, None]), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no visible key yet
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
            if FMT == 3:
                v_lo, v_hi = _int4_tile(v_base, vs_base, vz_base, offs_n, n_mask, stride_vn, stride_vsn, D, BLOCK_G, dt)
                pd = p.to(dt)
                acc_even = tl.dot(pd, v_lo, acc_even * alpha[:, None], input_precision=PRECISION)
                acc_odd = tl.dot(pd, v_hi, acc_odd * alpha[:, None], input_precision=PRECISION)
            else:
                vt = tl.load(
                    v_base + offs_n[:, None] * stride_vn + offs_d[None, :],
                    mask=n_mask[:, None] & d_mask[None, :],
                    other=0.0,
                )
                if F16:
                    # V's scales over the tile's largest keep p * s in fp16's normal range.
                    v_scale = tl.load(vs_base + offs_n * stride_vsn, mask=n_mask, other=0.0)
                    v_max = tl.maximum(tl.max(v_scale, axis=0), 1e-30)
                    pv = (p * (v_scale / v_max)[None, :]).to(tl.float16)
                    acc = acc * alpha[:, None] + v_max * tl.dot(pv, vt.to(tl.float16))
                else:
                    if FMT != 0:
                        v_scale = tl.load(vs_base + offs_n * stride_vsn, mask=n_mask, other=0.0)
                        p = p * v_scale[None, :]
                    acc = tl.dot(p.to(dt), vt.to(dt), acc * alpha[:, None], input_precision=PRECISION)
        has = l_i > 0
        inv_l = tl.where(has, 1.0 / tl.where(has, l_i, 1.0), 0.0)
        if DIRECT:
            dst = out_ptr + (pid_bh.to(tl.int64) * R + rows[:, None]) * D
            cast = out_ptr.dtype.element_ty
        else:
            part = (pid_bh.to(tl.int64) * SPLITS + split) * R + rows
            dst = o_ptr + part[:, None] * D
            cast = tl.float32
            tl.store(
                lse_ptr + part, tl.where(has, m_i + tl.math.log2(tl.where(has, l_i, 1.0)), float("-inf")), mask=r_mask
            )
        if FMT == 3:
            om = r_mask[:, None] & h_mask[None, :]
            tl.store(dst + 2 * offs_h[None, :], (acc_even * inv_l[:, None]).to(cast), mask=om)
            tl.store(dst + 2 * offs_h[None, :] + 1, (acc_odd * inv_l[:, None]).to(cast), mask=om)
        else:
            tl.store(dst + offs_d[None, :], (acc * inv_l[:, None]).to(cast), mask=r_mask[:, None] & d_mask[None, :])


@triton.jit(do_not_specialize=["HKV", "R", "CHUNK", "SPLITS"])
def _reduce_kernel(
    o_ptr,
    lse_ptr,
    lens_ptr,
    out_ptr,
    HKV,
    R,
    CHUNK,
    SPLITS,
    D: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[row] = sum over live splits of 2^(lse_i - m) o_i / sum 2^(lse_i - m); splits past the length were never
    written and are not read."""
    pid = tl.program_id(0)  # (b * HKV + h) * R + r
    bh = pid // R
    r = pid % R
    seq_len = tl.load(lens_ptr + bh // HKV).to(tl.int32)
    live = tl.cdiv(seq_len, CHUNK)
    offs_s = tl.arange(0, BLOCK_S)
    s_mask = offs_s < live
    part = (bh.to(tl.int64) * SPLITS + offs_s) * R + r
    lse = tl.load(lse_ptr + part, mask=s_mask, other=float("-inf"))
    m = tl.max(lse, axis=0)
    w = tl.where(s_mask, tl.math.exp2(lse - m), 0.0)
    offs_d = tl.arange(0, BLOCK_D)
    o = tl.load(o_ptr + part[:, None] * D + offs_d[None, :], mask=s_mask[:, None] & (offs_d < D)[None, :], other=0.0)
    y = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + pid.to(tl.int64) * D + offs_d, y.to(out_ptr.dtype.element_ty), mask=offs_d < D)


@dataclass(frozen=True)
class AttnConfig:
    """One launch: cache positions per split program (a multiple of block_n), tile sizes, Triton's warps/stages."""

    chunk: int
    block_n: int = 64
    block_r: int = 16
    num_warps: int = 4
    num_stages: int = 2


MAX_SPLITS = 64


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(batch: int, kv_heads: int, rows: int, capacity: int, head_dim: int, fmt: str, sm_count: int) -> AttnConfig:
    """Enough split programs for about 4 per SM over the cache capacity (at most MAX_SPLITS per head), each
    taking a power-of-two chunk of positions; row blocks of up to 64 query rows; smaller tiles for head_dim 256."""
    block_n = (64 if fmt == "none" else 128) if head_dim <= 128 else 32
    want = max(1, math.ceil(4 * sm_count / (batch * kv_heads)))
    chunk = max(block_n, _pow2_at_least(math.ceil(capacity / want)), _pow2_at_least(math.ceil(capacity / MAX_SPLITS)))
    block_r = min(64, max(16, _pow2_at_least(rows)))
    return AttnConfig(chunk=chunk, block_n=block_n, block_r=block_r, num_warps=4 if block_r <= 32 else 8)


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 132
    return torch.cuda.get_device_properties(device).multi_processor_count


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _supported(
    q: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
) -> bool:
    """The shapes and layouts the kernel reads directly (anything else runs the reference)."""
    if not (q.is_cuda or INTERPRET) or q.dtype not in _DTYPES or fmt not in KV_FORMATS or q.shape[-1] > 256:
        return False
    if k_codes.stride(-1) != 1 or v_codes.stride(-1) != 1 or q.shape[1] % k_codes.shape[1]:
        return False
    if fmt == "none":
        return k_codes.dtype == v_codes.dtype == q.dtype
    if k_scale is None or v_scale is None or k_scale.stride(-1) != 1 or v_scale.stride(-1) != 1:
        return False
    if fmt == "int4":
        return (
            q.shape[-1] % KV_INT4_GROUP == 0
            and k_zero is not None
            and v_zero is not None
            and k_zero.stride() == k_scale.stride()
            and v_zero.stride() == v_scale.stride()
        )
    return True


def cached_attention(
    q: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    seq_lens: torch.Tensor,
    fmt: str,
    sm_scale: float,
    *,
    config: AttnConfig | None = None,
) -> torch.Tensor:
    """Triton flash-decoding; same contract as accel.runtime.kv_ops.cached_attention (the reference), which runs
    instead for layouts the kernel does not read (module docstring). `config` overrides the plan."""
    if not _supported(q, k_codes, v_codes, k_scale, k_zero, v_scale, v_zero, fmt):
        return reference(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale)
    b, hq, t, d = q.shape
    hkv, cap = k_codes.shape[1], k_codes.shape[2]
    rows = hq // hkv * t
    q = q.contiguous()  # [b, hq, t, d] is [b, hkv, rows, d]
    cfg = config or plan(b, hkv, rows, cap, d, fmt, _sm_count(q.device))
    splits = math.ceil(cap / cfg.chunk)
    out = _empty((b, hq, t, d), q.dtype, q.device)
    if b == 0 or rows == 0:
        return out
    direct = splits == 1
    o_part = out if direct else _empty((b, hkv, splits, rows, d), torch.float32, q.device)
    lse = out if direct else _empty((b, hkv, splits, rows), torch.float32, q.device)
    k_scale = k_scale if k_scale is not None else k_codes  # not read for "none"
    v_scale = v_scale if v_scale is not None else v_codes
    k_zero = k_zero if k_zero is not None else k_scale  # read for int4 only
    v_zero = v_zero if v_zero is not None else v_scale
    block_d = _pow2_at_least(max(d, 16 if fmt != "int4" else 32))
    lens = seq_lens if seq_lens.device == q.device else seq_lens.to(q.device)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        grid = (b * hkv, splits, triton.cdiv(rows, cfg.block_r))
        _split_kernel[grid](
            q,
            k_codes,
            k_scale,
            k_zero,
            v_codes,
            v_scale,
            v_zero,
            lens,
            o_part,
            lse,
            out,
            sm_scale,
            cap,
            hkv,
            rows,
            t,
            cfg.chunk,
            splits,
            k_codes.stride(0),
            k_codes.stride(1),
            k_codes.stride(2),
            k_scale.stride(0),
            k_scale.stride(1),
            k_scale.stride(2),
            v_codes.stride(0),
            v_codes.stride(1),
            v_codes.stride(2),
            v_scale.stride(0),
            v_scale.stride(1),
            v_scale.stride(2),
            D=d,
            FMT=_FMT_CODE[fmt],
            DIRECT=direct,
            PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
            F16=fmt == "fp8" and q.dtype != torch.float32,
            BLOCK_R=cfg.block_r,
            BLOCK_N=cfg.block_n,
            BLOCK_D=block_d,
            num_warps=cfg.num_warps,
            num_stages=cfg.num_stages,
        )
        if not direct:
            _reduce_kernel[(b * hkv * rows,)](
                o_part,
                lse,
                lens,
                out,
                hkv,
                rows,
                cfg.chunk,
                splits,
                D=d,
                BLOCK_S=_pow2_at_least(splits),
                BLOCK_D=_pow2_at_least(d),
                num_warps=4,
            )
    return out
