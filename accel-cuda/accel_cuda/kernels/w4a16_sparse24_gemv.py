"""2:4-sparse x int4 decode GEMV in Triton (Sparse-Marlin's idea as a GEMV): y = x @ W^T with W 2:4 sparse along K.

What it reads per row (accel's compact N:M form, accel.sparsity.storage layout nm, converted once at load): the
kept 4-bit codes, 8 a word ([N, K/16] int32, nibbles permuted as in w4a16_gemv so slot pair (i, i + 4) holds codes
(2i, 2i + 1): the two kept codes of group i of the word), and their 2-bit positions in their group of 4, 16 bits a
word (the index bytes viewed as int16 [N, K/16]: nibble i = i0 | i1 << 2 for group i). Bytes per weight: 2 + 1 bits
of codes and positions for 4 of dense int4, so a weight-bound decode reads 3/4 of the dense kernel's bytes.

Per word (_DOT_SPARSE, inline PTX): the positions pick each group's two activations out of its four with one PRMT
(selector (2 i0, 2 i0 + 1, 2 i1, 2 i1 + 1) in nibbles, made from two table PRMTs over 0x76543210 and one PRMT per
group that pairs them), then the dense kernel's packed-pair arithmetic: LOP3 makes magic + q exactly, one sub.x2
gives q - zp, four fma.x2 the dot (the products and 4-term lane sums round to the half type, the rest is fp32).
The launch structure (row tiles x split-K x rows of x, register prefetch, last-program split-K fixup) is the dense
GEMV's (w4a16_gemv.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from accel_cuda.kernels.sparse24_layout import to_kernel_layout
from accel_cuda.kernels.tuning import card_rows, tuned_table
from accel_cuda.kernels.w4a16_gemv import _MAGIC, _device_info, launch_geometry, write_rows

__all__ = ["SparseGemvConfig", "prepare_sparse24", "sparse24_plan", "supports", "w4a16_sparse24_gemv"]

WORDS_PER_GROUP = 8  # value words per group of 128 inputs (16 inputs a word)


@triton.jit
def _load_words(w_ptr, m_ptr, rows, n_mask, kv0, KV, NG: tl.constexpr, EVEN: tl.constexpr):
    """Value words and position words [BLOCK_N, NG, 8] from word column kv0 (block kv0 / 8 + g in slice [., g, :])."""
    col = kv0 + tl.arange(0, NG)[:, None] * 8 + tl.arange(0, 8)[None, :]  # [NG, 8]
    offs = rows[:, None, None] * KV + col[None, :, :]
    if EVEN:
        words = tl.load(w_ptr + offs)
        meta = tl.load(m_ptr + offs).to(tl.int32)
    else:
        w_mask = n_mask[:, None, None] & (col < KV)[None, :, :]
        words = tl.load(w_ptr + offs, mask=w_mask, other=0)
        meta = tl.load(m_ptr + offs, mask=w_mask, other=0).to(tl.int32)
    return words, meta


@triton.jit
def _load_scales(s_ptr, z_ptr, rows, n_mask, kv0, G, ONE, shape: tl.constexpr, HAS_ZP: tl.constexpr,
                 NG: tl.constexpr, EVEN: tl.constexpr):
    """Each word's group scale and 8 + zero point (fp32, the words' shape), through pointers broadcast over the
    group's words. Loaded in the step that uses them: carried across iterations they cost a layout conversion."""
    g = kv0 // 8 + tl.arange(0, NG)
    gp = tl.broadcast_to((rows[:, None] * G + g[None, :] * ONE)[:, :, None], shape)
    if EVEN:
        s = tl.load(s_ptr + gp).to(tl.float32)
    else:
        g_mask = tl.broadcast_to((n_mask[:, None] & (g < G)[None, :])[:, :, None], shape)
        s = tl.load(s_ptr + gp, mask=g_mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        if EVEN:
            zf = tl.load(z_ptr + gp).to(tl.float32) + 8.0
        else:
            zf = tl.load(z_ptr + gp, mask=g_mask, other=0).to(tl.float32) + 8.0
    else:
        zf = tl.full(shape, 8.0, tl.float32)
    return s, zf


# One word's dot (PTX, sm_90 for the bf16x2 forms). $1: 8 kept codes, nibbles permuted (slot pair (i, i + 4) =
# group i's two codes); $2: their positions, nibble i = i0 | i1 << 2 for group i; $3: 8 + zp + magic (fp32);
# $4..$7: the word's 16 activations, one 64-bit group of 4 each. A PRMT selector nibble j picks byte j of
# {hi, lo}; half h is bytes (2h, 2h + 1), so group i's pair (x[i0], x[i1]) needs selector nibbles
# (2 i0, 2 i0 + 1, 2 i1, 2 i1 + 1), i.e. bytes T[i0], T[i1] of T = 0x76543210. pa / pb are T looked up at every
# group's i0 / i1 (PRMT with selector nibbles i0 / i1: positions & 0x3333 and (positions >> 2) & 0x3333), and
# PRMT(pa, pb, 0x40 + 0x11 i) pairs group i's two bytes.
_DOT_SPARSE_TEMPLATE = """{
.reg .b32 s1, s2, s3, t0, t1, t2, t3, z, d, a, b, pa, pb, tab, sl, y0, y1, y2, y3, xl, xh;
.reg .b16 lo, hi;
.reg .f32 flo, fhi;
mov.b32 tab, 0x76543210;
and.b32 a, $2, 0x3333;
shr.u32 b, $2, 2;
and.b32 b, b, 0x3333;
prmt.b32 pa, tab, tab, a;
prmt.b32 pb, tab, tab, b;
mov.b64 {xl, xh}, $4;
prmt.b32 sl, pa, pb, 0x40;
prmt.b32 y0, xl, xh, sl;
mov.b64 {xl, xh}, $5;
prmt.b32 sl, pa, pb, 0x51;
prmt.b32 y1, xl, xh, sl;
mov.b64 {xl, xh}, $6;
prmt.b32 sl, pa, pb, 0x62;
prmt.b32 y2, xl, xh, sl;
mov.b64 {xl, xh}, $7;
prmt.b32 sl, pa, pb, 0x73;
prmt.b32 y3, xl, xh, sl;
shr.u32 s1, $1, 4;
shr.u32 s2, $1, 8;
shr.u32 s3, $1, 12;
lop3.b32 t0, $1, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t1, s1, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t2, s2, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t3, s3, 0x000F000F, MAGIC2, 0xEA;
cvt.rn.TYPEx2.f32 z, $3, $3;
sub.rn.TYPEx2 t0, t0, z;
sub.rn.TYPEx2 t1, t1, z;
sub.rn.TYPEx2 t2, t2, z;
sub.rn.TYPEx2 t3, t3, z;
mul.rn.TYPEx2 d, t0, y0;
fma.rn.TYPEx2 d, t1, y1, d;
fma.rn.TYPEx2 d, t2, y2, d;
fma.rn.TYPEx2 d, t3, y3, d;
mov.b32 {lo, hi}, d;
cvt.f32.TYPE flo, lo;
cvt.f32.TYPE fhi, hi;
add.f32 $0, flo, fhi;
}"""
_DOT_SPARSE = {
    "bf16": _DOT_SPARSE_TEMPLATE.replace("MAGIC2", "0x43004300").replace("TYPE", "bf16"),
    "fp16": _DOT_SPARSE_TEMPLATE.replace("MAGIC2", "0x64006400").replace("TYPE", "f16"),
}


@triton.jit
def _step(acc, words, meta, s_ptr, z_ptr, xq_ptr, rows, n_mask, kv0, KV, G, ONE, HAS_ZP: tl.constexpr,
          ASM: tl.constexpr, MAGIC: tl.constexpr, NG: tl.constexpr, EVEN: tl.constexpr):
    """acc += each word's dot with its 16 activations. xq_ptr: this row of x as int64 [K/4], 4 halves each; word
    (b, w) reads groups 32 b + 8 j + w (sparse24_layout), so slot j's activations over w are contiguous."""
    s, zf = _load_scales(s_ptr, z_ptr, rows, n_mask, kv0, G, ONE, words.shape, HAS_ZP, NG, EVEN)
    blk = kv0 // 8 + tl.arange(0, NG)
    xg = tl.broadcast_to((xq_ptr + blk[:, None] * 32 + tl.arange(0, 8)[None, :])[None, :, :], words.shape)
    if EVEN:
        x0 = tl.load(xg)
        x1 = tl.load(xg + 8)
        x2 = tl.load(xg + 16)
        x3 = tl.load(xg + 24)
    else:
        xm = tl.broadcast_to((blk < KV // 8)[None, :, None], words.shape)
        x0 = tl.load(xg, mask=xm, other=0)
        x1 = tl.load(xg + 8, mask=xm, other=0)
        x2 = tl.load(xg + 16, mask=xm, other=0)
        x3 = tl.load(xg + 24, mask=xm, other=0)
    zb = tl.broadcast_to(zf + MAGIC, words.shape)
    part = tl.inline_asm_elementwise(ASM, "=f,r,r,f,l,l,l,l", [words, meta, zb, x0, x1, x2, x3], dtype=tl.float32,
                                     is_pure=True, pack=1)
    return acc + part * s


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT", "ONE"])
def _sparse_gemv_kernel(
    x_ptr, w_ptr, m_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KV, G, STEPS, SPLIT, ONE,
    HAS_ZP: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr,
    SPLIT_P2: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, MAGIC: tl.constexpr,
):
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    x_row = x_ptr + pid_m * 4 * KV
    kv_first = pid_s * STEPS * (NG * 8)
    acc = tl.zeros((BLOCK_N, NG, 8), dtype=tl.float32)
    if PREFETCH:
        words, meta = _load_words(w_ptr, m_ptr, rows, n_mask, kv_first, KV, NG, EVEN)
        for i in range(STEPS):
            kv0 = kv_first + i * (NG * 8)
            kv_next = tl.where(i + 1 < STEPS, kv0 + NG * 8, kv0)  # the last step reloads its own (in bounds)
            nw, nm = _load_words(w_ptr, m_ptr, rows, n_mask, kv_next, KV, NG, EVEN)
            acc = _step(acc, words, meta, s_ptr, z_ptr, x_row, rows, n_mask, kv0, KV, G, ONE, HAS_ZP, ASM, MAGIC,
                        NG, EVEN)
            words, meta = nw, nm
    else:
        for i in range(STEPS):
            kv0 = kv_first + i * (NG * 8)
            words, meta = _load_words(w_ptr, m_ptr, rows, n_mask, kv0, KV, NG, EVEN)
            acc = _step(acc, words, meta, s_ptr, z_ptr, x_row, rows, n_mask, kv0, KV, G, ONE, HAS_ZP, ASM, MAGIC,
                        NG, EVEN)
    write_rows(tl.sum(tl.sum(acc, axis=2), axis=1), out_ptr, ws_ptr, cnt_ptr, rows, n_mask, M, N, SPLIT, SPLIT_P2)


@dataclass(frozen=True)
class SparseGemvConfig:
    """One launch: rows per program, groups of 128 inputs per K step, split-K, register prefetch, warps."""

    block_n: int = 16
    ng: int = 4
    split: int = 1
    prefetch: bool = True
    num_warps: int = 4


TUNED_CONFIGS = Path(__file__).with_name("w4a16_sparse24_configs.json")


_tuned = functools.partial(tuned_table, TUNED_CONFIGS)


# Without a tuned table the sparse GEMV serves M up to this; larger M goes through the dense path.
GEMV_MAX_M = 2


def sparse24_plan(m: int, n: int, k: int, sms: int, device_name: str = "") -> SparseGemvConfig | None:
    """The tuned launch for this card / shape / M, else about 8 programs per SM for M <= GEMV_MAX_M; None above."""
    table = card_rows(_tuned(), device_name, f"{n}x{k}g128")
    if table is not None and str(m) in table:
        return SparseGemvConfig(**table[str(m)])  # type: ignore[arg-type]
    if m > GEMV_MAX_M:
        return None
    cfg = SparseGemvConfig()
    tiles = -(-n // cfg.block_n) * m
    steps = -(-k // (cfg.ng * 128))
    return SparseGemvConfig(split=max(1, min(steps, -(-8 * sms // tiles))))


def supports(k: int, groups: int, group_size: int) -> bool:
    """This kernel takes group size 128 (8 value words a group) and K a multiple of 128."""
    return k % 128 == 0 and group_size == 128 and groups == -(-k // 128)


def prepare_sparse24(values_packed: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The compact form's (values, indices) -> the kernel's (words int32, positions int16) [N, K/16]."""
    return to_kernel_layout(values_packed, indices)


def w4a16_sparse24_gemv(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    *,
    config: SparseGemvConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T, x [..., K] fp16/bf16, from prepare_sparse24's (values, positions) and per-group-128 scales
    (and signed zero points, or None for symmetric)."""
    k = x.shape[-1]
    n = values.shape[0]
    if positions.dtype != torch.int16 or positions.shape != values.shape or values.shape[1] * 16 != k or k % 128:
        raise ValueError("w4a16_sparse24_gemv reads prepare_sparse24's (values int32, positions int16) [N, K/16]")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    if config is None:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config = sparse24_plan(m, n, k, *_device_info(index)) or SparseGemvConfig()
    kv = k // 16
    steps, split, grid, even, ws, cnt = launch_geometry(kv, config.ng * 8, config.split, config.block_n, m, n, result)
    has_zp = weight_zero_point is not None
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    _sparse_gemv_kernel[grid](
        x2.view(torch.int64), values, positions, weight_scale, weight_zero_point if has_zp else weight_scale,
        result, ws, cnt, m, n, kv, weight_scale.shape[1], steps, split, 1,
        HAS_ZP=has_zp, PREFETCH=config.prefetch, BLOCK_N=config.block_n, NG=config.ng,
        SPLIT_P2=1 << max(0, (split - 1).bit_length()), EVEN=even, ASM=_DOT_SPARSE[dt], MAGIC=_MAGIC[dt],
        num_warps=config.num_warps, num_stages=1,
    )
    return result
