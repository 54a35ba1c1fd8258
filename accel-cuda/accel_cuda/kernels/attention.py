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

- int8 keys with 16-bit queries (v4, AttnConfig.qk_int8, the plan's choice): the scores run on the int8 tensor
  cores straight from the cached codes, the query split into an int8 pair q = step (hi + lo / 256), step =
  max|q| / 127 (two int32 dots; q held to max|q| / 65024); the key scale multiplies the score column as above.
- int8 values (and keys without qk_int8) with 16-bit queries (v3): the codes load as int32 words and become fp16
  in registers of the load's layout (XOR 0x80808080, PRMT with 0x64 bytes -> the fp16 pair 1024 + c + 128, HSUB2
  of 1152: exact), and the dots run in fp16 like fp8's (q rows scaled into [-1, 1], p by the tile's largest V
  scale). Converting before Triton lays V out for the PV dot stages 16-bit values through shared memory instead
  of single bytes.

AttnConfig.variant "fma" runs a CUDA-core split kernel instead (fp32 FMAs on the cache's own layout, rows not
padded to 16; none / int8 / fp8): exact and tested, but at GQA 4 x T=1 it issues about twice the instructions per
token of the tensor-core kernel, so the plan does not pick it (KERNEL_NOTES.md).

Position handling: query t of row b is at p = seq_lens[b] - T + t and sees positions <= p. A split that is live
for a row may hold none of a query's positions (T > 1): that query's partial has lse = -inf and output 0.
The number of splits is fixed by the cache capacity (not the lengths), so the launch needs no host sync and a
CUDA graph can capture it.

Both launches (split, and reduce after it) use programmatic dependent launch on Hopper (pdl.py): every program waits
for the previous kernel before its first load (seq_lens included), and lets the next one launch once its main loop
is done.
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
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release

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


# int8 word (4 codes c0..c3, c0 in the low byte) -> 4 fp16 codes: x ^ 0x80808080 makes each byte u = c + 128; PRMT
# pairs two bytes with 0x64 high bytes, the fp16 pair (1024 + u_a, 1024 + u_b); one HSUB2 of 1152 leaves c exactly.
_I8_F16_ASM = tl.constexpr("""{
.reg .b32 t, a, b, k;
xor.b32 t, $4, 0x80808080;
mov.b32 k, 0x64806480;
prmt.b32 a, t, 0x64646464, 0x4140;
prmt.b32 b, t, 0x64646464, 0x4342;
sub.rn.f16x2 a, a, k;
sub.rn.f16x2 b, b, k;
mov.b32 {$0, $1}, a;
mov.b32 {$2, $3}, b;
}""")


@triton.jit
def _int8_words_f16(w, ASM: tl.constexpr):
    """int8 codes loaded as int32 words [N, DW] -> fp16 [N, 4 DW] in channel order, exact, in registers of the
    load's own layout (so Triton stages 16-bit values, not bytes, for the dot's operand layout). Without ASM
    (the interpreter) the same bytes are cut out with shifts."""
    if ASM:
        c0, c1, c2, c3 = tl.inline_asm_elementwise(
            _I8_F16_ASM,
            "=h,=h,=h,=h,r",
            [w],
            dtype=(tl.float16, tl.float16, tl.float16, tl.float16),
            is_pure=True,
            pack=1,
        )
    else:
        c0 = ((w << 24) >> 24).to(tl.float16)
        c1 = ((w << 16) >> 24).to(tl.float16)
        c2 = ((w << 8) >> 24).to(tl.float16)
        c3 = (w >> 24).to(tl.float16)
    x = tl.join(tl.join(c0, c2), tl.join(c1, c3))  # [N, DW, 2 (b), 2 (a)]: channel 4 i + 2 b + a
    return tl.reshape(x, (x.shape[0], x.shape[1] * 4))


@triton.jit
def _int8_pair(q32, q_amax):
    """Each query row as two int8 vectors and a step: q = step (hi + lo / 256) with step = max|q| / 127, so that the
    scores against int8 keys run on the int8 tensor cores straight from the cached codes (two dots, int32 sums,
    exact). hi = round(q / step); lo = round(256 (q - hi step) / step), |lo| <= 128 clamped to 127: the pair holds
    q to within step / 512 = max|q| / 65024 (16 bits of the row's range; the fp16 route keeps 11 of each
    element). Rounding by the 1.5 * 2^23 trick (|values| <= 256)."""
    step = q_amax / 127.0
    hi = (q32 / step[:, None] + 12582912.0) - 12582912.0
    lo = ((q32 - hi * step[:, None]) * (256.0 / step[:, None]) + 12582912.0) - 12582912.0
    lo = tl.minimum(tl.maximum(lo, -127.0), 127.0)
    return hi.to(tl.int8), lo.to(tl.int8), step


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
    WORDS: tl.constexpr,
    ASM: tl.constexpr,
    QK_I8: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    pid_r = tl.program_id(2)
    b = pid_bh // HKV
    h = pid_bh % HKV
    pdl_enter(PDL)  # before any load: seq_lens too may come from the kernel before
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
            if QK_I8:
                q_hi, q_lo, q_step = _int8_pair(q32, q_amax)
            acc = tl.zeros((BLOCK_R, BLOCK_D), tl.float32)
            offs_w = tl.arange(0, BLOCK_D // 4)  # int8 codes as int32 words (WORDS)
            w_mask = offs_w < D // 4
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            n_mask = offs_n < end
            if FMT == 3:
                k_lo, k_hi = _int4_tile(k_base, ks_base, kz_base, offs_n, n_mask, stride_kn, stride_ksn, D, BLOCK_G, dt)
                s = tl.dot(q_even, tl.trans(k_lo), input_precision=PRECISION)
                s = tl.dot(q_odd, tl.trans(k_hi), s, input_precision=PRECISION)
                s = s * qk_scale
            else:
                if QK_I8:
                    kt = tl.load(
                        k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :],
                        other=0,
                    )
                    kt = tl.trans(kt)
                    s_hi = tl.dot(q_hi, kt, out_dtype=tl.int32).to(tl.float32)
                    s_lo = tl.dot(q_lo, kt, out_dtype=tl.int32).to(tl.float32)
                    s = (s_hi + s_lo * (1.0 / 256.0)) * q_step[:, None]
                elif WORDS:
                    kw = tl.load(
                        k_base.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * (stride_kn // 4) + offs_w[None, :],
                        mask=n_mask[:, None] & w_mask[None, :],
                        other=0,
                    )
                    s = tl.dot(q, tl.trans(_int8_words_f16(kw, ASM)))
                    s = s * q_amax[:, None]
                elif F16:
                    kt = tl.load(
                        k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :],
                        other=0.0,
                    )
                    s = tl.dot(q, tl.trans(kt.to(tl.float16)))
                    s = s * q_amax[:, None]
                else:
                    kt = tl.load(
                        k_base + offs_n[:, None] * stride_kn + offs_d[None, :],
                        mask=n_mask[:, None] & d_mask[None, :],
                        other=0.0,
                    )
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
                if WORDS:
                    vw = tl.load(
                        v_base.to(tl.pointer_type(tl.int32)) + offs_n[:, None] * (stride_vn // 4) + offs_w[None, :],
                        mask=n_mask[:, None] & w_mask[None, :],
                        other=0,
                    )
                    vt = _int8_words_f16(vw, ASM)
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
        pdl_release(PDL)  # splits past the length exit without it: an exit releases too
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


@triton.jit
def _codes_f32(x, FMT: tl.constexpr):
    """int8 / fp8 / 16-bit / fp32 codes as exact fp32. int8 without I2F (an eighth-rate conversion): the byte
    c ^ 0x80 = c + 128 sits in the low mantissa bits of 2^23, so (byte ^ 0x4B000080) read as fp32 is
    2^23 + 128 + c, and one FADD of -(2^23 + 128) leaves c."""
    if FMT == 1:
        u = x.to(tl.uint8, bitcast=True).to(tl.int32)
        return (u ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    else:
        return x.to(tl.float32)


@triton.jit(do_not_specialize=["sm_scale", "cap", "HKV", "R", "T", "CHUNK", "SPLITS"])
def _fma_kernel(
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
    BLOCK_R: tl.constexpr,
    REPS: tl.constexpr,
    LANES: tl.constexpr,
    BLOCK_D: tl.constexpr,
    PDL: tl.constexpr,
):
    """The split launch on CUDA cores (v3), for few query rows per KV head (decode): fp32 FMAs on [REPS, LANES, D]
    tiles in the cache's own layout (16-byte loads along head_dim, no token-pair shuffle for V, no padding of the
    rows to 16). Each of the LANES token slots of a tile (tile token i = rep * LANES + lane) keeps its own online
    softmax (m, l, acc[r, lane, :]), so the loop needs no cross-thread max or sum over tokens, only the sum over
    head_dim for the scores; the slots merge once at the end: m = max_lane m_lane,
    l = sum_lane 2^(m_lane - m) l_lane, o = sum_lane 2^(m_lane - m) acc_lane / l."""
    pid_bh = tl.program_id(0)
    split = tl.program_id(1)
    pid_r = tl.program_id(2)
    b = pid_bh // HKV
    h = pid_bh % HKV
    pdl_enter(PDL)
    seq_len = tl.load(lens_ptr + b).to(tl.int32)
    start = split * CHUNK
    if start < seq_len:
        end = tl.minimum(start + CHUNK, seq_len)
        BLOCK_N: tl.constexpr = REPS * LANES
        rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        r_mask = rows < R
        qpos = seq_len - T + rows % T
        q_rows = q_ptr + (pid_bh.to(tl.int64) * R + rows[:, None]) * D
        b64 = b.to(tl.int64)
        k_base = k_ptr + b64 * stride_kb + h * stride_kh
        v_base = v_ptr + b64 * stride_vb + h * stride_vh
        ks_base = ks_ptr + b64 * stride_ksb + h * stride_ksh
        vs_base = vs_ptr + b64 * stride_vsb + h * stride_vsh
        # 4-D tiles [row, lane, rep, channel] (tile token = rep * LANES + lane): every operand is built in 4-D, so
        # Triton lays each out like the K / V loads (16 bytes per thread along channels, lanes across threads, reps
        # and rows within a thread) and the sums over channels / reps are the only reductions.
        offs_d = tl.arange(0, BLOCK_D)[None, None, None, :]
        d_mask = offs_d < D
        offs_r = rows[:, None, None, None]
        # sm_scale * log2 e folded into q: scores come out in base 2.
        q = tl.load(q_rows[:, :, None, None] + offs_d, mask=(offs_r < R) & d_mask, other=0.0).to(tl.float32)
        q = q * (sm_scale * 1.4426950408889634)  # [BLOCK_R, 1, 1, BLOCK_D]
        offs_t = tl.arange(0, LANES)[None, :, None, None] + tl.arange(0, REPS)[None, None, :, None] * LANES
        m_i = tl.full((BLOCK_R, LANES, 1), float("-inf"), tl.float32)
        l_i = tl.zeros((BLOCK_R, LANES, 1), tl.float32)
        acc = tl.zeros((BLOCK_R, LANES, 1, BLOCK_D), tl.float32)
        qpos3 = qpos[:, None, None]
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + offs_t  # [1, LANES, REPS, 1]
            n_mask = offs_n < end
            kt = tl.load(k_base + offs_n * stride_kn + offs_d, mask=n_mask & d_mask, other=0.0)
            s = tl.sum(q * _codes_f32(kt, FMT), axis=3)  # [BLOCK_R, LANES, REPS]
            if FMT != 0:
                s = s * tl.sum(tl.load(ks_base + offs_n * stride_ksn, mask=n_mask, other=0.0), axis=3)
            n3 = tl.sum(offs_n, axis=3)  # [1, LANES, REPS]: the token positions, in the scores' layout
            s = tl.where((n3 < end) & (n3 <= qpos3), s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=2, keep_dims=True))  # [BLOCK_R, LANES, 1]
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # slots with no visible key yet
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe)
            l_i = l_i * alpha + tl.sum(p, axis=2, keep_dims=True)
            m_i = m_new
            vt = tl.load(v_base + offs_n * stride_vn + offs_d, mask=n_mask & d_mask, other=0.0)
            if FMT != 0:
                p = p * tl.sum(tl.load(vs_base + offs_n * stride_vsn, mask=n_mask, other=0.0), axis=3)
            acc = acc * alpha[:, :, :, None] + tl.sum(p[:, :, :, None] * _codes_f32(vt, FMT), axis=2, keep_dims=True)
        pdl_release(PDL)
        m_i = tl.reshape(m_i, (BLOCK_R, LANES))
        l_i = tl.reshape(l_i, (BLOCK_R, LANES))
        acc = tl.reshape(acc, (BLOCK_R, LANES, BLOCK_D))
        offs_d = tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        m_row = tl.max(m_i, axis=1)
        w = tl.math.exp2(m_i - tl.where(m_row == float("-inf"), 0.0, m_row)[:, None])  # 0 for empty slots
        l_row = tl.sum(l_i * w, axis=1)
        o = tl.sum(acc * w[:, :, None], axis=1)  # [BLOCK_R, BLOCK_D]
        has = l_row > 0
        inv_l = tl.where(has, 1.0 / tl.where(has, l_row, 1.0), 0.0)
        if DIRECT:
            dst = out_ptr + (pid_bh.to(tl.int64) * R + rows[:, None]) * D
            cast = out_ptr.dtype.element_ty
        else:
            part = (pid_bh.to(tl.int64) * SPLITS + split) * R + rows
            dst = o_ptr + part[:, None] * D
            cast = tl.float32
            lse = tl.where(has, m_row + tl.math.log2(tl.where(has, l_row, 1.0)), float("-inf"))
            tl.store(lse_ptr + part, lse, mask=r_mask)
        tl.store(dst + offs_d[None, :], (o * inv_l[:, None]).to(cast), mask=r_mask[:, None] & d_mask[None, :])


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
    PDL: tl.constexpr,
):
    """out[row] = sum over live splits of 2^(lse_i - m) o_i / sum 2^(lse_i - m); splits past the length were never
    written and are not read."""
    pid = tl.program_id(0)  # (b * HKV + h) * R + r
    bh = pid // R
    r = pid % R
    pdl_enter(PDL)  # the split launch's partials
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
    pdl_release(PDL)
    tl.store(out_ptr + pid.to(tl.int64) * D + offs_d, y.to(out_ptr.dtype.element_ty), mask=offs_d < D)


@dataclass(frozen=True)
class AttnConfig:
    """One launch: cache positions per split program (a multiple of block_n), tile sizes, Triton's warps/stages, and
    the split kernel: "dot" (tensor cores, rows padded to 16) or "fma" (CUDA cores, rows unpadded; no int4)."""

    chunk: int
    block_n: int = 64
    block_r: int = 16
    num_warps: int = 4
    num_stages: int = 2
    variant: str = "dot"
    max_regs: int | None = None  # ptxas register cap per thread (Triton's maxnreg): 168 -> 3 programs of 4 warps/SM
    qk_int8: bool = False  # int8 cache: scores on the int8 tensor cores (query as an int8 pair, _int8_pair)


MAX_SPLITS = 64
VARIANTS = ("dot", "fma")
# Programs of the planned split kernel that one SM holds at once (sm_90 compile, head_dim 128, 4 warps): bf16 96
# registers / 38 KB shared -> 5; int8 168 / 73 KB -> 3; fp8 255 and int4 248 registers -> 2.
RESIDENT = {"none": 5, "int8": 3, "fp8": 2, "int4": 2}


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan(batch: int, kv_heads: int, rows: int, capacity: int, head_dim: int, fmt: str, sm_count: int) -> AttnConfig:
    """Split programs for one full wave: as many as fit the SMs at once (RESIDENT per SM for head_dim <= 128, else
    about 4), at most MAX_SPLITS per head, each taking a chunk of positions that is a multiple of block_n; row
    blocks of up to 64 query rows; smaller tiles for head_dim 256. (v2 took power-of-two chunks for ~4 programs
    per SM: 512 programs at B=1 32k where 396 fit, a second wave of 116.) Always the tensor-core kernel: at GQA 4 x
    T=1 the CUDA-core one issues about twice the instructions per token (sm_90 SASS, KERNEL_NOTES.md)."""
    block_n = (64 if fmt == "none" else 128) if head_dim <= 128 else 32
    block_r = min(64, max(16, _pow2_at_least(rows)))
    num_warps = 4 if block_r <= 32 else 8
    resident = RESIDENT.get(fmt, 2) if head_dim <= 128 and num_warps == 4 else 4
    heads = batch * kv_heads * math.ceil(rows / block_r)
    splits = min(MAX_SPLITS, max(1, resident * sm_count // max(1, heads)), math.ceil(capacity / block_n))
    chunk = block_n * math.ceil(capacity / (splits * block_n))
    # int8 scores run on the int8 tensor cores (v4, qk_int8: 18% fewer loop instructions than v3's fp16 keys, 168
    # registers uncapped, 3 programs of 4 warps per SM; H200 32k: 38.4 vs 39.8 us at B=1, 384 vs 406 at B=16).
    qk_int8 = fmt == "int8" and head_dim % 32 == 0
    # fp8 and int4 pipeline three tiles deep (sweep, H200, 32k: fp8 37.4 -> 31.7 us at B=1, 458 -> 342 at B=16; int4
    # 57.4 -> 55.0, 765 -> 703); bf16 and int8 lose with it (their shared memory then caps the programs per SM).
    num_stages = 3 if fmt in ("fp8", "int4") else 2
    max_regs = None
    if fmt != "none" and head_dim <= 128 and num_warps == 4 and heads > resident * sm_count:
        # More (batch, head) programs than one wave holds (e.g. decode at batch 64: 512 against 396 for int8): 64
        # positions a tile and 128 registers fit 4 programs per SM. H200, Llama-3-8B GQA, 176 of 256 positions
        # (session 8 sweep): int8 20.7 -> 16.4 us, fp8 22.0 -> 17.4, int4 31.0 -> 22.0; at 1k positions int8 70.2 ->
        # 65.5, int4 97.5 -> 87.2, fp8 63.2 -> 63.6.
        block_n, max_regs = 64, 128
        chunk = block_n * math.ceil(capacity / (splits * block_n))
    return AttnConfig(chunk=chunk, block_n=block_n, block_r=block_r, num_warps=num_warps, num_stages=num_stages,
                      max_regs=max_regs, qk_int8=qk_int8)


def _variant(cfg: AttnConfig, fmt: str) -> str:
    """The config's split kernel, checked: the CUDA-core kernel has no int4 path."""
    if cfg.variant not in VARIANTS or (cfg.variant == "fma" and fmt == "int4"):
        raise ValueError(f"AttnConfig.variant must be one of {VARIANTS} (fma: not int4), got {cfg.variant!r}")
    return cfg.variant


def _fma_tile(cfg: AttnConfig, block_d: int, elem_bytes: int) -> tuple[int, int]:
    """(LANES, REPS) of the CUDA-core kernel's [REPS, LANES, head_dim] tile: LANES = the tokens one pass of the
    program's threads covers at 16 bytes per thread (elem_bytes 0: int4, two channels a byte), REPS = the passes
    in block_n tokens (at least one)."""
    row_bytes = block_d // 2 if elem_bytes == 0 else block_d * elem_bytes
    threads_per_token = min(32, max(1, row_bytes // 16))
    lanes = max(1, cfg.num_warps * 32 // threads_per_token)
    return lanes, max(1, cfg.block_n // lanes)


def _sm_count(device: torch.device) -> int:
    return device_info(device).sms


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
    variant = _variant(cfg, fmt)
    # int8 codes read as int32 words and turned into fp16 in registers (dot path, 16-bit queries).
    words = (
        fmt == "int8"
        and q.dtype != torch.float32
        and d % 4 == 0
        and all(x % 4 == 0 for x in (*k_codes.stride()[:3], *v_codes.stride()[:3]))
        and k_codes.data_ptr() % 4 == 0
        and v_codes.data_ptr() % 4 == 0
    )
    block_r = min(cfg.block_r, _pow2_at_least(rows)) if variant == "fma" else cfg.block_r
    pdl = pdl_mode(q.device)
    common = (
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
    )
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        grid = (b * hkv, splits, triton.cdiv(rows, block_r))
        if variant == "fma":
            lanes, reps = _fma_tile(cfg, block_d, k_codes.element_size() if fmt != "int4" else 0)
            _fma_kernel[grid](
                *common,
                D=d,
                FMT=_FMT_CODE[fmt],
                DIRECT=direct,
                BLOCK_R=block_r,
                REPS=reps,
                LANES=lanes,
                BLOCK_D=block_d,
                PDL=pdl,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                maxnreg=cfg.max_regs,
                launch_pdl=bool(pdl),
            )
        else:
            _split_kernel[grid](
                *common,
                D=d,
                FMT=_FMT_CODE[fmt],
                DIRECT=direct,
                PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                F16=fmt in ("fp8", "int8") and q.dtype != torch.float32,
                WORDS=words,
                ASM=not INTERPRET,
                QK_I8=words and cfg.qk_int8 and d % 32 == 0,
                BLOCK_R=block_r,
                BLOCK_N=cfg.block_n,
                BLOCK_D=block_d,
                PDL=pdl,
                num_warps=cfg.num_warps,
                num_stages=cfg.num_stages,
                maxnreg=cfg.max_regs,
                launch_pdl=bool(pdl),
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
                PDL=pdl,
                num_warps=4,
                launch_pdl=bool(pdl),
            )
    return out
