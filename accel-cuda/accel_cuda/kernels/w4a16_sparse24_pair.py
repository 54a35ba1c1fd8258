"""2:4 x int4 decode GEMV, row-pair variant: each thread takes the same word column of two adjacent rows, so one set
of activation loads serves both (the single-row kernel spends 2 x 16-byte activation loads per word, twice the dense
GEMV's per word, and the dense GEMV is already bound by its load stalls).

Layout (prepare_pairs, from w4a16_sparse24_gemv's per-row layout): words [N/2, K/16] int64 = the two rows' words of
one column side by side; positions [N/2, K/16] int32 = the two rows' 16-bit position words (row 2p low half).
Arithmetic per row as _DOT_SPARSE.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from accel_cuda.kernels.w4a16_gemv import _MAGIC, _device_info, launch_geometry, write_rows
from accel_cuda.kernels.w4a16_sparse24_gemv import SparseGemvConfig, _load_scales, _load_words, sparse24_plan

__all__ = ["prepare_pairs", "w4a16_sparse24_pair_gemv"]


def _row_body(word: str, meta: str, zb: str, out: str, tag: str) -> str:
    """PTX for one row's word (see w4a16_sparse24_gemv._DOT_SPARSE_TEMPLATE), registers suffixed with `tag`."""
    r = {name: f"{name}{tag}" for name in ("a", "b", "pa", "pb", "sl", "y0", "y1", "y2", "y3", "s1", "s2", "s3",
                                            "t0", "t1", "t2", "t3", "z", "d", "lo", "hi", "flo", "fhi")}
    lines = [
        f"and.b32 {r['a']}, {meta}, 0x3333;",
        f"shr.u32 {r['b']}, {meta}, 2;",
        f"and.b32 {r['b']}, {r['b']}, 0x3333;",
        f"prmt.b32 {r['pa']}, tab, tab, {r['a']};",
        f"prmt.b32 {r['pb']}, tab, tab, {r['b']};",
    ]
    for j in range(4):
        lines += [f"prmt.b32 {r['sl']}, {r['pa']}, {r['pb']}, 0x{4 + j}{j};",
                  f"prmt.b32 {r[f'y{j}']}, x{j}l, x{j}h, {r['sl']};"]
    lines += [f"shr.u32 {r[f's{i}']}, {word}, {4 * i};" for i in (1, 2, 3)]
    lines += [f"lop3.b32 {r[f't{i}']}, {word if i == 0 else r[f's{i}']}, 0x000F000F, MAGIC2, 0xEA;" for i in range(4)]
    lines += [f"cvt.rn.TYPEx2.f32 {r['z']}, {zb}, {zb};"]
    lines += [f"sub.rn.TYPEx2 {r[f't{i}']}, {r[f't{i}']}, {r['z']};" for i in range(4)]
    lines += [f"mul.rn.TYPEx2 {r['d']}, {r['t0']}, {r['y0']};"]
    lines += [f"fma.rn.TYPEx2 {r['d']}, {r[f't{i}']}, {r[f'y{i}']}, {r['d']};" for i in (1, 2, 3)]
    lines += [f"mov.b32 {{{r['lo']}, {r['hi']}}}, {r['d']};", f"cvt.f32.TYPE {r['flo']}, {r['lo']};",
              f"cvt.f32.TYPE {r['fhi']}, {r['hi']};", f"add.f32 {out}, {r['flo']}, {r['fhi']};"]
    decl = ".reg .b32 " + ", ".join(v for k, v in r.items() if k not in ("lo", "hi", "flo", "fhi")) + ";\n"
    decl += f".reg .b16 {r['lo']}, {r['hi']};\n.reg .f32 {r['flo']}, {r['fhi']};\n"
    return decl + "\n".join(lines)


def _pair_template() -> str:
    # $0, $1: the rows' dots; $2: the two words (int64); $3: the two position words; $4, $5: the rows' 8 + zp +
    # magic; $6..$9: the 16 activations, one 64-bit group of 4 each.
    head = ".reg .b32 tab, w0, w1, m1, x0l, x0h, x1l, x1h, x2l, x2h, x3l, x3h;\nmov.b32 tab, 0x76543210;\n"
    head += "mov.b64 {w0, w1}, $2;\nshr.u32 m1, $3, 16;\n"
    head += "".join(f"mov.b64 {{x{j}l, x{j}h}}, ${6 + j};\n" for j in range(4))
    rows = _row_body("w0", "$3", "$4", "$0", "r0") + "\n" + _row_body("w1", "m1", "$5", "$1", "r1")
    return "{\n" + head + rows + "\n}"


_DOT_PAIR = {
    "bf16": _pair_template().replace("MAGIC2", "0x43004300").replace("TYPE", "bf16"),
    "fp16": _pair_template().replace("MAGIC2", "0x64006400").replace("TYPE", "f16"),
}


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT", "ONE"])
def _pair_kernel(
    x_ptr, w_ptr, m_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KV, G, STEPS, SPLIT, ONE,
    HAS_ZP: tl.constexpr, BLOCK_P: tl.constexpr, NG: tl.constexpr, SPLIT_P2: tl.constexpr, EVEN: tl.constexpr,
    ASM: tl.constexpr, MAGIC: tl.constexpr,
):
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    pairs = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = pairs < N // 2
    x_row = x_ptr + pid_m * 4 * KV
    kv_first = pid_s * STEPS * (NG * 8)
    acc0 = tl.zeros((BLOCK_P, NG, 8), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_P, NG, 8), dtype=tl.float32)
    for i in range(STEPS):
        kv0 = kv_first + i * (NG * 8)
        words, meta = _load_words(w_ptr, m_ptr, pairs, p_mask, kv0, KV, NG, EVEN)
        s0, z0 = _load_scales(s_ptr, z_ptr, 2 * pairs, p_mask, kv0, G, ONE, words.shape, HAS_ZP, NG, EVEN)
        s1, z1 = _load_scales(s_ptr, z_ptr, 2 * pairs + 1, p_mask, kv0, G, ONE, words.shape, HAS_ZP, NG, EVEN)
        blk = kv0 // 8 + tl.arange(0, NG)
        xg = tl.broadcast_to((x_row + blk[:, None] * 32 + tl.arange(0, 8)[None, :])[None, :, :], words.shape)
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
        p0, p1 = tl.inline_asm_elementwise(ASM, "=f,=f,l,r,f,f,l,l,l,l",
                                           [words, meta, z0 + MAGIC, z1 + MAGIC, x0, x1, x2, x3],
                                           dtype=(tl.float32, tl.float32), is_pure=True, pack=1)
        acc0 += p0 * s0
        acc1 += p1 * s1
    y = tl.reshape(tl.join(tl.sum(tl.sum(acc0, axis=2), axis=1), tl.sum(tl.sum(acc1, axis=2), axis=1)),
                   (2 * BLOCK_P,))
    rows = tl.program_id(0) * (2 * BLOCK_P) + tl.arange(0, 2 * BLOCK_P)
    write_rows(y, out_ptr, ws_ptr, cnt_ptr, rows, rows < N, M, N, SPLIT, SPLIT_P2)


def prepare_pairs(words: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The single-row kernel's (words int32, positions int16) [N, K/16], N even -> (int64, int32) [N/2, K/16]."""
    n, kv = words.shape
    if n % 2:
        raise ValueError(f"the row-pair layout needs an even number of rows, got {n}")
    w = words.reshape(n // 2, 2, kv).transpose(1, 2).contiguous().view(torch.int64).reshape(n // 2, kv)
    p = positions.reshape(n // 2, 2, kv).transpose(1, 2).contiguous().view(torch.int32).reshape(n // 2, kv)
    return w, p


def w4a16_sparse24_pair_gemv(
    x: torch.Tensor,
    words: torch.Tensor,
    positions: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    *,
    config: SparseGemvConfig | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T from prepare_pairs' (words, positions); config.block_n counts rows (two per pair)."""
    k = x.shape[-1]
    n = 2 * words.shape[0]
    if words.dtype != torch.int64 or positions.dtype != torch.int32 or words.shape[1] * 16 != k or k % 128:
        raise ValueError("w4a16_sparse24_pair_gemv reads prepare_pairs' (words int64, positions int32) [N/2, K/16]")
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
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    _pair_kernel[grid](
        x2.view(torch.int64), words, positions, weight_scale, weight_zero_point if weight_zero_point is not None
        else weight_scale, result, ws, cnt, m, n, kv, weight_scale.shape[1], steps, split, 1,
        HAS_ZP=weight_zero_point is not None, BLOCK_P=config.block_n // 2, NG=config.ng,
        SPLIT_P2=1 << max(0, (split - 1).bit_length()), EVEN=even and n % config.block_n == 0,
        ASM=_DOT_PAIR[dt], MAGIC=_MAGIC[dt], num_warps=config.num_warps, num_stages=1,
    )
    return result
