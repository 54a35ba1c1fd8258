"""W4A16 linear in Triton on compressed-tensors' pack-quantized layout: y = x @ ((q - zp) * s)^T.

Weights: int32 [N, K/8], code j of a word at bits [4j, 4j+4), stored as q + 8; scales [N, G] in x's dtype;
zero points int8 [N, G] or None. Every kernel turns nibbles into exact floats q - zp with one LOP3 and one FFMA
each (the 2^23 magic number, `_unpack8`), and each K sub-tile lies in one quantization group (its size divides
the group size), so scales and zero points load once per row per sub-tile. Paths (`Config.kernel`):

- gemv: BLOCK_N output columns x a K range per program (split-K when there are too few column tiles), fp32
  multiply-adds with x, the group scale once per K tile; the next tile's words prefetched in registers.
- dot: swap-AB tl.dot, W tile [BLOCK_N, NUM_G * BLOCK_K] (scale folded in, one rounding to x's dtype) against
  x^T [BK, BLOCK_M >= 16], so M = 1..16 pads only x's side.
- dot8: like dot without re-interleaving the nibbles: one tl.dot per nibble j against x[8w + j]; with one
  group per K step the codes stay exact and the scale multiplies the fp32 sum.
- dequant: dequantize the whole weight into x's dtype, then cuBLAS.

Split-K partials go to an fp32 workspace that a second small kernel sums and casts. `plan` picks the launch
per M from the table tuned per card and shape (w4a16_configs.json) or a heuristic. On Hopper, with the words
permuted at load (`prepare`), M = 1, 2 run the TMA decode GEMV (w4a16_gemv_tma.py) and M = 3..128 the TMA-pipelined
tensor-core kernel (wxa16_tma_dot.py); the kernels here serve other cards and shapes (accel-cuda/KERNEL_NOTES.md).
Every kernel here (split-K reduce and dequantize included) is launched with programmatic dependent launch on Hopper
(pdl.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import triton
import triton.language as tl

from accel.runtime.ops import w4a16_linear as reference
from accel_cuda.kernels import w4a16_gemv as gemv
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.nibbles import unpermute_nibbles
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.tuning import card_rows, tuned_table

__all__ = ["Config", "plan", "prepare", "w4a16_dequantize", "w4a16_linear"]

# Tests set this to fill workspaces with NaN, so an element a kernel failed to write shows.
POISON = False
# Under Triton's interpreter (TRITON_INTERPRET=1) the kernels run on CPU tensors too, for debugging without a GPU.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _unpack8(words, zf):
    """Eight exact fp32 tensors q_j - zp (j = 0..7) from int32 words [R, W] and zf = 8 + zp [R, 1].

    0x4B000000 is 2^23 as float32 bits; a nibble OR-ed into its mantissa gives the float 2^23 + nibble exactly.
    Nibble j sits at bits 4j..4j+3 and holds u = q + 8. For j <= 4, (words & (15 << 4j)) | 2^23 is the float
    2^23 + u * 16^j (all bits stay below the exponent), so fma(that, 16^-j, -(2^23 * 16^-j + zf)) = u - zf
    = q - zp exactly. Nibbles 5..7 take the same route from words >> 20 (one shift for three).
    """
    v0 = ((words & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + zf)
    v1 = ((words & 0xF0) | 0x4B000000).to(tl.float32, bitcast=True) * 0.0625 - (524288.0 + zf)
    v2 = ((words & 0xF00) | 0x4B000000).to(tl.float32, bitcast=True) * 0.00390625 - (32768.0 + zf)
    v3 = ((words & 0xF000) | 0x4B000000).to(tl.float32, bitcast=True) * 0.000244140625 - (2048.0 + zf)
    v4 = ((words & 0xF0000) | 0x4B000000).to(tl.float32, bitcast=True) * 0.0000152587890625 - (128.0 + zf)
    hi = words >> 20
    v5 = ((hi & 0xF) | 0x4B000000).to(tl.float32, bitcast=True) - (8388608.0 + zf)
    v6 = ((hi & 0xF0) | 0x4B000000).to(tl.float32, bitcast=True) * 0.0625 - (524288.0 + zf)
    v7 = ((hi & 0xF00) | 0x4B000000).to(tl.float32, bitcast=True) * 0.00390625 - (32768.0 + zf)
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _codes8(words, zf, PERMUTED: tl.constexpr):
    """_unpack8's values in code order: with PERMUTED words (w4a16_gemv.permute_nibbles: slot i holds code 2i
    for i < 4 and code 2(i - 4) + 1 above), code c sits in slot c // 2 + 4 (c % 2)."""
    v0, v1, v2, v3, v4, v5, v6, v7 = _unpack8(words, zf)
    if PERMUTED:
        return v0, v4, v1, v5, v2, v6, v3, v7
    return v0, v1, v2, v3, v4, v5, v6, v7


@triton.jit
def _interleave8(v0, v1, v2, v3, v4, v5, v6, v7, ROWS: tl.constexpr, COLS: tl.constexpr):
    """[ROWS, COLS // 8] x 8 -> [ROWS, COLS] with element 8w + j = v_j[:, w].

    tl.join adds a new minor dimension, so the outermost join picks bit 0 of j, the next bit 1, the innermost
    bit 2: index [w, a, b, c] of the joined tensor holds v_(4a + 2b + c)."""
    even = tl.join(tl.join(v0, v4), tl.join(v2, v6))
    odd = tl.join(tl.join(v1, v5), tl.join(v3, v7))
    return tl.reshape(tl.join(even, odd), (ROWS, COLS))


@triton.jit
def _load_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t_lim, num_tiles, KW, G, group_size,
               HAS_ZP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Words [BLOCK_N, BLOCK_K // 8] of K tile t, and that tile's scale and 8 + zero point per row; all masked
    off (zeros) unless t < t_lim (the end of this program's K range) and t < num_tiles."""
    WPB: tl.constexpr = BLOCK_K // 8
    offs_w = t * WPB + tl.arange(0, WPB)
    live = (t < t_lim) & (t < num_tiles)
    w_mask = n_mask[:, None] & (offs_w[None, :] < KW) & live
    words = tl.load(w_ptr + offs_n[:, None] * KW + offs_w[None, :], mask=w_mask, other=0)
    g = (t * BLOCK_K) // group_size
    row_mask = n_mask & live
    s = tl.load(s_ptr + offs_n * G + g, mask=row_mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        zf = tl.load(z_ptr + offs_n * G + g, mask=row_mask, other=0).to(tl.float32) + 8.0
    else:
        zf = tl.zeros_like(s) + 8.0
    return words, s, zf


@triton.jit
def _gemv_tile(acc, words, s, zf, x_ptr, offs_m, m_mask, t, K, stride_xm, BLOCK_K: tl.constexpr,
               PERMUTED: tl.constexpr):
    """acc [BLOCK_M, BLOCK_N, BLOCK_K // 8] += s * sum_j (q_j - zp) * x[:, t * BLOCK_K + 8w + j]."""
    v0, v1, v2, v3, v4, v5, v6, v7 = _codes8(words, zf[:, None], PERMUTED)
    kk = t * BLOCK_K + tl.arange(0, BLOCK_K // 8) * 8
    xp = x_ptr + offs_m[:, None] * stride_xm + kk[None, :]
    xm = m_mask[:, None] & (kk[None, :] < K)
    part = v0[None, :, :] * tl.load(xp, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v1[None, :, :] * tl.load(xp + 1, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v2[None, :, :] * tl.load(xp + 2, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v3[None, :, :] * tl.load(xp + 3, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v4[None, :, :] * tl.load(xp + 4, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v5[None, :, :] * tl.load(xp + 5, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v6[None, :, :] * tl.load(xp + 6, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    part += v7[None, :, :] * tl.load(xp + 7, mask=xm, other=0.0).to(tl.float32)[:, None, :]
    return acc + part * s[None, :, None]


# Sizes that only bound masks are not specialized (fewer compiles); KW and stride_xm are, since their
# divisibility lets loads of words and of x go 16 bytes wide.
_RUNTIME_ARGS = ["M", "N", "K", "G", "group_size", "tiles_per_split", "stride_om", "stride_os"]


@triton.jit(do_not_specialize=_RUNTIME_ARGS)
def _w4a16_gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, KW, G, group_size, tiles_per_split,
    stride_xm, stride_om, stride_os,
    HAS_ZP: tl.constexpr, PREFETCH: tl.constexpr, PERMUTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    num_tiles = tl.cdiv(K, BLOCK_K)
    # Every program runs tiles_per_split K tiles; those past K (last split only) are masked off.
    t_start = pid_s * tiles_per_split
    t_lim = t_start + tiles_per_split
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K // 8), dtype=tl.float32)
    if PREFETCH:
        # Registers double-buffer the words: the next tile's load is in flight while this one is computed.
        words, s, zf = _load_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t_start, t_lim, num_tiles, KW, G,
                                  group_size, HAS_ZP, BLOCK_K)
        for t in range(t_start, t_lim):
            n_words, n_s, n_zf = _load_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t + 1, t_lim, num_tiles, KW, G,
                                            group_size, HAS_ZP, BLOCK_K)
            acc = _gemv_tile(acc, words, s, zf, x_ptr, offs_m, m_mask, t, K, stride_xm, BLOCK_K, PERMUTED)
            words, s, zf = n_words, n_s, n_zf
    else:
        for t in range(t_start, t_lim):
            words, s, zf = _load_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t_lim, num_tiles, KW, G, group_size,
                                      HAS_ZP, BLOCK_K)
            acc = _gemv_tile(acc, words, s, zf, x_ptr, offs_m, m_mask, t, K, stride_xm, BLOCK_K, PERMUTED)
    pdl_release(PDL)
    y = tl.sum(acc, axis=2)
    out = out_ptr + pid_s * stride_os + offs_m[:, None] * stride_om + offs_n[None, :]
    tl.store(out, y.to(out_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _load_wide_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t_lim, num_tiles, KW, G, group_size,
                    HAS_ZP: tl.constexpr, GROUP_K: tl.constexpr, NUM_G: tl.constexpr):
    """Words [BLOCK_N, NUM_G, GROUP_K // 8] of K tile t (NUM_G * GROUP_K codes per row, one contiguous run of
    NUM_G * GROUP_K / 2 bytes), with the scale and 8 + zero point of each of its NUM_G sub-tiles [BLOCK_N, NUM_G].
    Masked off (zeros) unless t < t_lim and t < num_tiles."""
    GW: tl.constexpr = GROUP_K // 8
    gi = tl.arange(0, NUM_G)
    offs_w = t * (NUM_G * GW) + gi[:, None] * GW + tl.arange(0, GW)[None, :]  # [NUM_G, GW]
    live = (t < t_lim) & (t < num_tiles)
    w_mask = n_mask[:, None, None] & (offs_w < KW)[None, :, :] & live
    words = tl.load(w_ptr + offs_n[:, None, None] * KW + offs_w[None, :, :], mask=w_mask, other=0)
    g = (t * (NUM_G * GROUP_K) + gi * GROUP_K) // group_size
    g_mask = n_mask[:, None] & (g < G)[None, :] & live
    s = tl.load(s_ptr + offs_n[:, None] * G + g[None, :], mask=g_mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        zf = tl.load(z_ptr + offs_n[:, None] * G + g[None, :], mask=g_mask, other=0).to(tl.float32) + 8.0
    else:
        zf = tl.zeros_like(s) + 8.0
    return words, s, zf


@triton.jit
def _flat(v, ROWS: tl.constexpr, BK: tl.constexpr):
    """[ROWS, NUM_G, GROUP_K // 8] -> [ROWS, BK // 8]: the sub-tiles side by side, as in memory."""
    return tl.reshape(v, (ROWS, BK // 8))


@triton.jit(do_not_specialize=_RUNTIME_ARGS)
def _w4a16_dot_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, KW, G, group_size, tiles_per_split,
    stride_xm, stride_om, stride_os,
    HAS_ZP: tl.constexpr, PERMUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUP_K: tl.constexpr,
    NUM_G: tl.constexpr,
    PDL: tl.constexpr,
):
    """Swap-AB tiled product: out^T tile [BLOCK_N, BLOCK_M] += W tile [BLOCK_N, BK] @ x^T tile [BK, BLOCK_M],
    BK = NUM_G * GROUP_K. W = (q - zp) * s is formed in fp32 (exact codes, one rounding to x's dtype)."""
    BK: tl.constexpr = NUM_G * GROUP_K
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_k = tl.arange(0, BK)
    num_tiles = tl.cdiv(K, BK)
    t_start = pid_s * tiles_per_split
    t_lim = t_start + tiles_per_split
    dt = x_ptr.dtype.element_ty
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t_start, t_lim):
        words, s, zf = _load_wide_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t_lim, num_tiles, KW, G,
                                       group_size, HAS_ZP, GROUP_K, NUM_G)
        kk = t * BK + offs_k
        xt = tl.load(x_ptr + offs_m[None, :] * stride_xm + kk[:, None],
                     mask=(kk[:, None] < K) & m_mask[None, :], other=0.0)  # x^T tile [BK, BLOCK_M]
        v0, v1, v2, v3, v4, v5, v6, v7 = _codes8(words, zf[:, :, None], PERMUTED)
        sc = s[:, :, None]
        a = _interleave8(_flat((v0 * sc).to(dt), BLOCK_N, BK), _flat((v1 * sc).to(dt), BLOCK_N, BK),
                         _flat((v2 * sc).to(dt), BLOCK_N, BK), _flat((v3 * sc).to(dt), BLOCK_N, BK),
                         _flat((v4 * sc).to(dt), BLOCK_N, BK), _flat((v5 * sc).to(dt), BLOCK_N, BK),
                         _flat((v6 * sc).to(dt), BLOCK_N, BK), _flat((v7 * sc).to(dt), BLOCK_N, BK), BLOCK_N, BK)
        acc = tl.dot(a, xt, acc)
    pdl_release(PDL)
    out = out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


@triton.jit(do_not_specialize=_RUNTIME_ARGS)
def _w4a16_dot8_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr,
    M, N, K, KW, G, group_size, tiles_per_split,
    stride_xm, stride_om, stride_os,
    HAS_ZP: tl.constexpr, PERMUTED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    GROUP_K: tl.constexpr,
    NUM_G: tl.constexpr,
    PDL: tl.constexpr,
):
    """Like _w4a16_dot_kernel without re-interleaving the nibbles: sum_k W[n, k] x[k] is split by nibble j,
    sum_j sum_w W[n, 8w + j] x[8w + j], so nibble j's codes [BLOCK_N, words] are the A operand of their own dot
    against x[:, 8w + j]. With NUM_G == 1 the tile is one group and its scale multiplies the tile's sum."""
    BK: tl.constexpr = NUM_G * GROUP_K
    WPT: tl.constexpr = BK // 8
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < M
    offs_w = tl.arange(0, WPT)
    num_tiles = tl.cdiv(K, BK)
    t_start = pid_s * tiles_per_split
    t_lim = t_start + tiles_per_split
    dt = x_ptr.dtype.element_ty
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for t in range(t_start, t_lim):
        words, s, zf = _load_wide_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t_lim, num_tiles, KW, G,
                                       group_size, HAS_ZP, GROUP_K, NUM_G)
        kx = t * BK + offs_w * 8
        xb = x_ptr + offs_m[None, :] * stride_xm + kx[:, None]  # x^T rows 8w (+ j): [WPT, BLOCK_M]
        xm = (kx[:, None] < K) & m_mask[None, :]
        v0, v1, v2, v3, v4, v5, v6, v7 = _codes8(words, zf[:, :, None], PERMUTED)
        if NUM_G == 1:
            part = tl.dot(_flat(v0.to(dt), BLOCK_N, BK), tl.load(xb, mask=xm, other=0.0))
            part = tl.dot(_flat(v1.to(dt), BLOCK_N, BK), tl.load(xb + 1, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v2.to(dt), BLOCK_N, BK), tl.load(xb + 2, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v3.to(dt), BLOCK_N, BK), tl.load(xb + 3, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v4.to(dt), BLOCK_N, BK), tl.load(xb + 4, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v5.to(dt), BLOCK_N, BK), tl.load(xb + 5, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v6.to(dt), BLOCK_N, BK), tl.load(xb + 6, mask=xm, other=0.0), part)
            part = tl.dot(_flat(v7.to(dt), BLOCK_N, BK), tl.load(xb + 7, mask=xm, other=0.0), part)
            acc += part * tl.reshape(s, (BLOCK_N, 1))
        else:
            sc = s[:, :, None]
            acc = tl.dot(_flat((v0 * sc).to(dt), BLOCK_N, BK), tl.load(xb, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v1 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 1, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v2 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 2, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v3 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 3, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v4 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 4, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v5 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 5, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v6 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 6, mask=xm, other=0.0), acc)
            acc = tl.dot(_flat((v7 * sc).to(dt), BLOCK_N, BK), tl.load(xb + 7, mask=xm, other=0.0), acc)
    pdl_release(PDL)
    out = out_ptr + pid_s * stride_os + offs_m[None, :] * stride_om + offs_n[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=n_mask[:, None] & m_mask[None, :])


@triton.jit(do_not_specialize=["total", "SPLIT"])
def _splitk_reduce_kernel(ws_ptr, out_ptr, total, SPLIT, BLOCK: tl.constexpr, PDL: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(SPLIT):
        acc += tl.load(ws_ptr + i * total + offs, mask=mask, other=0.0)
    pdl_release(PDL)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["N", "K", "G", "group_size"])
def _w4_dequant_kernel(
    w_ptr, s_ptr, z_ptr, out_ptr, N, K, KW, G, group_size,
    HAS_ZP: tl.constexpr, PERMUTED: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    t = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    pdl_enter(PDL)
    words, s, zf = _load_tile(w_ptr, s_ptr, z_ptr, offs_n, n_mask, t, t + 1, tl.cdiv(K, BLOCK_K), KW, G,
                              group_size, HAS_ZP, BLOCK_K)
    v0, v1, v2, v3, v4, v5, v6, v7 = _codes8(words, zf[:, None], PERMUTED)
    sc = s[:, None]
    dt = out_ptr.dtype.element_ty
    w = _interleave8((v0 * sc).to(dt), (v1 * sc).to(dt), (v2 * sc).to(dt), (v3 * sc).to(dt), (v4 * sc).to(dt),
                     (v5 * sc).to(dt), (v6 * sc).to(dt), (v7 * sc).to(dt), BLOCK_N, BLOCK_K)
    kk = t * BLOCK_K + tl.arange(0, BLOCK_K)
    pdl_release(PDL)
    tl.store(out_ptr + offs_n[:, None] * K + kk[None, :], w, mask=n_mask[:, None] & (kk[None, :] < K))


@dataclass(frozen=True)
class Config:
    """One launch plan: which kernel, its tile sizes, split-K and Triton's warps / pipeline stages."""

    kernel: str  # "gemv", "dot", "dot8" or "dequant"
    block_m: int = 16
    block_n: int = 64
    block_k: int = 128  # codes per row of one quantization-group-aligned sub-tile (divides the group size)
    num_g: int = 1  # dot: sub-tiles per K step, so one step reads num_g * block_k / 2 contiguous bytes per row
    split: int = 1
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = False


def _device_info(device: torch.device) -> tuple[int, str]:
    """(SM count, name) of a CUDA device, cached (device.device_info); (132, "") for CPU tensors under the
    interpreter."""
    info = device_info(device)
    return info.sms, info.name


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _block_k_limit(group: int) -> int:
    """The largest power of two dividing the group size (capped at 128): K tiles never straddle a group."""
    return min(128, group & -group)


def _split_for(tiles: int, k: int, block_k: int, want: int, min_k: int) -> int:
    """Split K so that tiles * split reaches `want` programs, keeping at least min_k of K per split."""
    if tiles >= want:
        return 1
    return max(1, min(-(-want // tiles), k // max(min_k, block_k)))


# Launch configs measured best per card, weight shape and M (bench/kernels_w4a16.py --sweep writes them):
# {device name: {"NxKgG": {"M": Config fields}}}. An M is served by the smallest tuned M >= it.
TUNED_CONFIGS = Path(__file__).with_name("w4a16_configs.json")
# Above this M the dequantize-then-cuBLAS path runs (untuned shapes).
DOT_MAX_M = 256


_tuned = functools.partial(tuned_table, TUNED_CONFIGS)


def plan(m: int, n: int, k: int, group: int, dtype: torch.dtype, sm_count: int, device_name: str = "") -> Config:
    """The launch plan for an [m, k] x [n, k]^T product with this group size (> 0): the tuned config for this
    card and shape when there is one, else a heuristic."""
    bk = _block_k_limit(group)
    if dtype == torch.float32:
        # fp32 activations are a correctness path: exact fp32 gemv for modest M, else dequantize + cuBLAS.
        if m > 64:
            return Config("dequant", block_n=32, block_k=bk)
        bm = min(_pow2_at_least(m), 8)
        return Config("gemv", block_m=bm, block_n=32, block_k=bk, split=1, num_warps=4, num_stages=2)
    table = card_rows(_tuned(), device_name, f"{n}x{k}g{group}") or {}
    fits = sorted(int(key) for key in table if int(key) >= m)
    if fits:
        return Config(**table[str(fits[0])])  # type: ignore[arg-type]
    if m > DOT_MAX_M:
        return Config("dequant", block_n=32, block_k=bk)
    bm = min(max(16, _pow2_at_least(m)), 128)
    bn = 32 if m <= 32 else 64
    num_g = max(1, min(4, 512 // bk))
    tiles = -(-n // bn) * -(-m // bm)
    split = _split_for(tiles, k, bk * num_g, 2 * sm_count, 1024)
    warps = 8 if bn * bm >= 64 * 64 else 4
    return Config("dot", block_m=bm, block_n=bn, block_k=bk, num_g=num_g, split=split, num_warps=warps,
                  num_stages=3)


def _launch_config(cfg: Config, group: int) -> Config:
    """Clamp a requested config to what this group size allows (tile K divides the group); dot8's per-nibble
    dots need at least 16 words (128 codes) per K step."""
    cfg = replace(cfg, block_k=min(cfg.block_k, _block_k_limit(group)))
    if cfg.kernel == "dot8" and cfg.block_k * cfg.num_g < 128:
        cfg = replace(cfg, num_g=128 // cfg.block_k)
    return cfg


def w4a16_dequantize(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    k: int,
    dtype: torch.dtype,
    *,
    block_n: int = 32,
    block_k: int = 128,
    permuted: bool = False,
) -> torch.Tensor:
    """W = (q - zp) * s as [N, K] in dtype (scaled in fp32, then rounded once); `permuted` words went through
    w4a16_gemv.permute_nibbles."""
    n = weight_packed.shape[0]
    groups = weight_scale.shape[1]
    group = group_size if groups > 1 else 1 << 30
    block_k = min(block_k, _block_k_limit(group))
    out = _empty((n, k), dtype, weight_packed.device)
    zp = weight_zero_point if weight_zero_point is not None else weight_scale
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    pdl = pdl_mode(weight_packed.device)
    _w4_dequant_kernel[grid](
        weight_packed, weight_scale, zp, out, n, k, weight_packed.shape[1], groups, group,
        HAS_ZP=weight_zero_point is not None, PERMUTED=permuted, BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl,
        num_warps=4, launch_pdl=bool(pdl),
    )
    return out


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    *,
    out: torch.Tensor | None = None,
    config: Config | None = None,
    permuted: bool = False,
) -> torch.Tensor:
    """Triton W4A16 linear; same contract as accel.runtime.ops.w4a16_linear (the reference).

    Falls back to the reference off CUDA, for dtypes other than fp16/bf16/fp32, K not a multiple of 8, or group
    sizes with no power-of-two divisor >= 16. `out` ([M, N] contiguous, x's dtype) receives the result when
    given; `config` overrides the plan (benchmarks and tests). `permuted`: the words went through
    w4a16_gemv.permute_nibbles (`prepare` does that once at load), which opens the packed-pair decode GEMV for
    the M it was tuned for (w4a16_gemv.py); every other path reads permuted words as well."""
    k = x.shape[-1]
    n = weight_packed.shape[0]
    groups = weight_scale.shape[1]
    group = group_size if group_size > 0 else k
    if (
        not (x.is_cuda or INTERPRET)
        or x.dtype not in (torch.float16, torch.bfloat16, torch.float32)
        or k % 8
        or weight_packed.shape != (n, k // 8)
        or weight_scale.shape[0] != n
        or groups != math.ceil(k / group)
    ):
        if permuted:
            weight_packed = unpermute_nibbles(weight_packed)
        y = reference(x, weight_packed, weight_scale, weight_zero_point, group_size)
        if out is not None:
            out.copy_(y.reshape(out.shape))
            return out
        return y
    if groups == 1:
        group = 1 << 30  # one group per row: every tile is in group 0, whatever K is
    if _block_k_limit(group) < 16:
        if permuted:
            weight_packed = unpermute_nibbles(weight_packed)
        return reference(x, weight_packed, weight_scale, weight_zero_point, group_size)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    weight_packed = weight_packed.contiguous()
    weight_scale = weight_scale.contiguous()
    has_zp = weight_zero_point is not None
    zp = weight_zero_point.contiguous() if has_zp else weight_scale
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    out = result.view(m, n)  # the caller's buffer must be contiguous, x's dtype
    if out.dtype != x.dtype:
        raise ValueError(f"out has dtype {out.dtype}, x has {x.dtype}")
    if m == 0:
        return result
    if permuted and x.dtype in (torch.float16, torch.bfloat16) and gemv.supports(k, groups, group_size):
        # Hopper: the tensor-core kernel where it is planned (M = 3..128, and M = 2 where a sweep measured it faster
        # than the GEMV), then the TMA GEMV (symmetric), then the register GEMV.
        if config is None and x.is_cuda and _tma_ready(weight_packed, weight_scale, zp):
            from accel_cuda.kernels import wxa16_tma_dot as tma_dot

            sms, name = _device_info(x.device)
            dcfg = tma_dot.tma_dot_plan(m, n, k, 4, name, device_info(x.device).capability, sms)
            if dcfg is not None and tma_dot.supports_tma_dot(n, k, groups, dcfg, 4, has_zp):
                return tma_dot.wxa16_tma_dot(x, weight_packed, weight_scale, zp if has_zp else None, bits=4,
                                             config=dcfg, out=result)
        if not has_zp and x.is_cuda and _tma_ready(weight_packed, weight_scale):
            from accel_cuda.kernels import w4a16_gemv_tma as gemv_tma

            tcfg = gemv_tma.tma_plan(m, n, k, _device_info(x.device)[1], device_info(x.device).capability)
            if tcfg is not None:
                return gemv_tma.w4a16_tma_gemv(x, weight_packed, weight_scale, None, config=tcfg, out=result)
        gcfg = gemv.gemv_plan(m, n, k, *_device_info(x.device))
        if gcfg is not None:
            return gemv.w4a16_gemv(x, weight_packed, weight_scale, weight_zero_point, config=gcfg, out=result,
                                   permuted=True)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        cfg = _launch_config(config or plan(m, n, k, group, x.dtype, *_device_info(x.device)), group)
        if cfg.kernel == "dequant":
            weight = w4a16_dequantize(weight_packed, weight_scale, weight_zero_point, group_size, k, x.dtype,
                                      block_n=cfg.block_n, block_k=cfg.block_k, permuted=permuted)
            torch.mm(x2, weight.t(), out=out)
            return result
        bk = cfg.block_k * (cfg.num_g if cfg.kernel in ("dot", "dot8") else 1)
        num_tiles = math.ceil(k / bk)
        tiles_per_split = math.ceil(num_tiles / max(1, min(cfg.split, num_tiles)))
        split = math.ceil(num_tiles / tiles_per_split)
        target = out if split == 1 else _empty((split, m, n), torch.float32, x.device)
        grid = (triton.cdiv(n, cfg.block_n), split, triton.cdiv(m, cfg.block_m))
        args = (x2, weight_packed, weight_scale, zp, target, m, n, k, k // 8, groups, group, tiles_per_split,
                x2.stride(0), n, m * n)
        pdl = pdl_mode(x.device)
        if cfg.kernel == "gemv":
            _w4a16_gemv_kernel[grid](*args, HAS_ZP=has_zp, PREFETCH=cfg.prefetch, PERMUTED=permuted,
                                     BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, PDL=pdl,
                                     num_warps=cfg.num_warps, num_stages=cfg.num_stages, launch_pdl=bool(pdl))
        elif cfg.kernel in ("dot", "dot8"):
            kernel = _w4a16_dot_kernel if cfg.kernel == "dot" else _w4a16_dot8_kernel
            kernel[grid](*args, HAS_ZP=has_zp, PERMUTED=permuted, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
                         GROUP_K=cfg.block_k, NUM_G=cfg.num_g, PDL=pdl, num_warps=cfg.num_warps,
                         num_stages=cfg.num_stages, launch_pdl=bool(pdl))
        else:
            raise ValueError(f"unknown kernel {cfg.kernel!r}")
        if split > 1:
            total = m * n
            _splitk_reduce_kernel[(triton.cdiv(total, 1024),)](target, out, total, split, BLOCK=1024, PDL=pdl,
                                                               num_warps=4, launch_pdl=bool(pdl))
    return result


def _tma_ready(*tensors: torch.Tensor) -> bool:
    """Tensor descriptors need 16-byte aligned bases (rows are checked by supports_tma)."""
    return all(t.data_ptr() % 16 == 0 for t in tensors)


def prepare(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int], dict[str, object]]:
    """Convert a layer's artifact tensors once, at load, into what these kernels read fastest: the nibbles
    permuted for the packed-pair decode GEMV (the words stay [N, K/8] and every other path reads them too).
    Returns the op's weight arguments and the keyword arguments to pass with them on every call."""
    k = weight_packed.shape[1] * 8
    if not weight_packed.is_cuda or not gemv.supports(k, weight_scale.shape[1], group_size):
        return (weight_packed, weight_scale, weight_zero_point, group_size), {}
    return (gemv.permute_nibbles(weight_packed), weight_scale, weight_zero_point, group_size), {"permuted": True}
