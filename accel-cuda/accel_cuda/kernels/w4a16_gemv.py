"""W4A16 decode GEMV in Triton on the artifact's words [N, K/8], nibbles permuted once at load: y = x @ W^T.

A decode step reads every weight once, so the kernel is judged by bytes in flight per SM (DRAM latency times
bandwidth: about 1 us x 4.2 TB/s / 132 SMs = 32 KB on an H200) and by instructions per code, which the first
versions spent 7 of (accel-cuda/KERNEL_NOTES.md). The tile per K step is [BLOCK_N rows, NG groups, 16 words]:
a warp's 32 threads read 4 words (16 bytes) each of one row, so a row segment of NG * 64 bytes is read
contiguously. Scales, zero points and activations are loaded through pointers broadcast to the words' shape, so
they arrive in the words' register layout (no shared-memory layout conversions, no barriers in the loop).

Per word (_DOT_WORD, inline PTX): the codes are permuted so that slot pair (i, i + 4) holds codes (2i, 2i + 1);
one LOP3 per pair makes two half-precision values magic + u exactly, one subtraction gives the pair q - zp
exactly, and four fma.x2 with the activation pairs (x's own memory order, read as two 64-bit loads) give the
word's dot in two lanes, added in fp32; the group scale multiplies it in fp32. About 2.5 instructions per code.
Each program takes one row of x (grid axis 2): for M = 2 the programs of one weight tile run side by side and
the repeat reads hit L2. Split-K partials go to an fp32 workspace and the last program of a column block (a
counter it resets) sums them, so a call is one launch. Launched with programmatic dependent launch on Hopper
(pdl.py): wait before the first load, release after the K loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.nibbles import permute_nibbles, unpermute_nibbles
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.tuning import card_rows, tuned_table

__all__ = ["GemvConfig", "gemv_plan", "permute_nibbles", "supports", "unpermute_nibbles", "w4a16_gemv"]


@triton.jit
def _load_step(w_ptr, s_ptr, z_ptr, rows, n_mask, kw0, KW, G, ONE, HAS_ZP: tl.constexpr, NG: tl.constexpr,
               EVEN: tl.constexpr):
    """Words [BLOCK_N, NG, 16] from word column kw0 (one group per [., g, :] slice; masked past KW), and each
    word's group scale and 8 + zero point (fp32, same shape)."""
    gi = tl.arange(0, NG)
    col = kw0 + gi[:, None] * 16 + tl.arange(0, 16)[None, :]  # [NG, 16]
    if EVEN:  # every row and word column of every step exists: no masks, so no predicated loads
        words = tl.load(w_ptr + rows[:, None, None] * KW + col[None, :, :])
    else:
        w_mask = n_mask[:, None, None] & (col < KW)[None, :, :]
        words = tl.load(w_ptr + rows[:, None, None] * KW + col[None, :, :], mask=w_mask, other=0)
    # Scales and zero points by group (16 words of group size 128), their pointers broadcast over the group's
    # words so they load straight into the words' register layout (no shared-memory layout conversion).
    g = kw0 // 16 + gi  # [NG]
    gp = tl.broadcast_to((rows[:, None] * G + g[None, :] * ONE)[:, :, None], words.shape)
    if EVEN:
        s = tl.load(s_ptr + gp).to(tl.float32)
    else:
        g_mask = tl.broadcast_to((n_mask[:, None] & (g < G)[None, :])[:, :, None], words.shape)
        s = tl.load(s_ptr + gp, mask=g_mask, other=0.0).to(tl.float32)
    if HAS_ZP:
        if EVEN:
            zf = tl.load(z_ptr + gp).to(tl.float32) + 8.0
        else:
            zf = tl.load(z_ptr + gp, mask=g_mask, other=0).to(tl.float32) + 8.0
    else:
        zf = tl.full(words.shape, 8.0, tl.float32)
    return words, s, zf


# Packed half-precision dot of one word with its 8 activations (PTX, sm_90 for the bf16x2 forms). Input $1: a word
# whose nibbles were permuted at load (permute_nibbles) so that slot pairs (i, i + 4) hold codes (2i, 2i + 1);
# $2: 8 + zp + the magic number, fp32; $3, $4: the word's activations as two 64-bit halves, each two 2 x 16-bit
# pairs (x[8w + 2i], x[8w + 2i + 1]), which is x's own memory order. (w >> 4i) & 0x000F000F | magic is the pair
# magic + u exactly (magic 128 for bf16, 1024 for fp16, whose unit in the last place is 1); minus 8 + zp + magic
# is the pair q - zp exactly; four fma.x2 give the two lanes' sums, added in fp32 ($0). The products and the
# 4-term lane sums round to the half type (relative error about 2^-9 for bf16), everything after is fp32.
_DOT_WORD_TEMPLATE = """{
.reg .b32 s1, s2, s3, t0, t1, t2, t3, z, d, x0, x1, x2, x3;
.reg .b16 lo, hi;
.reg .f32 flo, fhi;
mov.b64 {x0, x1}, $3;
mov.b64 {x2, x3}, $4;
shr.u32 s1, $1, 4;
shr.u32 s2, $1, 8;
shr.u32 s3, $1, 12;
lop3.b32 t0, $1, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t1, s1, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t2, s2, 0x000F000F, MAGIC2, 0xEA;
lop3.b32 t3, s3, 0x000F000F, MAGIC2, 0xEA;
cvt.rn.TYPEx2.f32 z, $2, $2;
sub.rn.TYPEx2 t0, t0, z;
sub.rn.TYPEx2 t1, t1, z;
sub.rn.TYPEx2 t2, t2, z;
sub.rn.TYPEx2 t3, t3, z;
mul.rn.TYPEx2 d, t0, x0;
fma.rn.TYPEx2 d, t1, x1, d;
fma.rn.TYPEx2 d, t2, x2, d;
fma.rn.TYPEx2 d, t3, x3, d;
mov.b32 {lo, hi}, d;
cvt.f32.TYPE flo, lo;
cvt.f32.TYPE fhi, hi;
add.f32 $0, flo, fhi;
}"""
# The magic number twice (two 16-bit lanes): 128.0 in bf16 is 0x4300, 1024.0 in fp16 is 0x6400.
_DOT_WORD = {
    "bf16": _DOT_WORD_TEMPLATE.replace("MAGIC2", "0x43004300").replace("TYPE", "bf16"),
    "fp16": _DOT_WORD_TEMPLATE.replace("MAGIC2", "0x64006400").replace("TYPE", "f16"),
}
_MAGIC = {"bf16": 128.0, "fp16": 1024.0}


@triton.jit
def _step_packed(acc, words, s, zf, xw_ptr, rows, kw0, KW, ASM: tl.constexpr, MAGIC: tl.constexpr,
                 NG: tl.constexpr, EVEN: tl.constexpr):
    """Like _step with half-precision pair arithmetic (_DOT_WORD); xw_ptr: this row of x viewed as int64 [KW, 2]
    (two activation pairs in each)."""
    col = kw0 + tl.arange(0, NG)[:, None] * 16 + tl.arange(0, 16)[None, :]
    xk = tl.broadcast_to((xw_ptr + col[:, :, None] * 2 + tl.arange(0, 2)[None, None, :])[None, :, :, :],
                         (rows.shape[0], NG, 16, 2))
    if EVEN:
        xab = tl.load(xk)
    else:
        xm = tl.broadcast_to((col < KW)[None, :, :, None], (rows.shape[0], NG, 16, 2))
        xab = tl.load(xk, mask=xm, other=0)
    xa, xb = tl.split(xab)
    zb = tl.broadcast_to(zf + MAGIC, words.shape)
    part = tl.inline_asm_elementwise(ASM, "=f,r,f,l,l", [words, zb, xa, xb], dtype=tl.float32, is_pure=True, pack=1)
    return acc + part * s


@triton.jit
def write_rows(y, out_ptr, ws_ptr, cnt_ptr, rows, n_mask, M, N, SPLIT, SPLIT_P2: tl.constexpr):
    """Store this program's rows y [BLOCK_N] (grid: row tiles x split-K x rows of x). With split-K, partials go to
    the fp32 workspace and the last program of the row tile (a counter it resets, so CUDA graph replays reuse it)
    sums them: a call stays one launch."""
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    out = out_ptr + pid_m * N + rows
    if SPLIT == 1:
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=n_mask)
    else:
        tile = pid_m * N + rows
        tl.store(ws_ptr + pid_s * M * N + tile, y, mask=n_mask)
        tl.debug_barrier()
        cnt = cnt_ptr + pid_m * tl.num_programs(0) + pid_n
        done = tl.atomic_add(cnt, 1, sem="acq_rel")
        if done == SPLIT - 1:
            sp = tl.arange(0, SPLIT_P2)
            parts = tl.load(ws_ptr + sp[:, None] * M * N + tile[None, :],
                            mask=(sp < SPLIT)[:, None] & n_mask[None, :], other=0.0, cache_modifier=".cg")
            tl.store(out, tl.sum(parts, axis=0).to(out_ptr.dtype.element_ty), mask=n_mask)
            tl.atomic_xchg(cnt, 0)


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT", "ONE"])
def _gemv_kernel(
    x_ptr, w_ptr, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, G, STEPS, SPLIT, stride_xm, ONE,
    HAS_ZP: tl.constexpr, PREFETCH: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr,
    SPLIT_P2: tl.constexpr, EVEN: tl.constexpr, ASM: tl.constexpr, MAGIC: tl.constexpr, PDL: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = rows < N
    x_row = x_ptr + pid_m * 2 * KW
    kw_first = pid_s * STEPS * (NG * 16)
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_N, NG, 16), dtype=tl.float32)
    if PREFETCH:
        words, s, zf = _load_step(w_ptr, s_ptr, z_ptr, rows, n_mask, kw_first, KW, G, ONE, HAS_ZP, NG, EVEN)
        for i in range(STEPS):
            kw0 = kw_first + i * (NG * 16)
            # The last step prefetches its own words again (unmasked loads must stay in bounds; an L2 hit).
            kw_next = tl.where(i + 1 < STEPS, kw0 + NG * 16, kw0)
            nxt_w, nxt_s, nxt_z = _load_step(w_ptr, s_ptr, z_ptr, rows, n_mask, kw_next, KW, G, ONE, HAS_ZP, NG, EVEN)
            acc = _step_packed(acc, words, s, zf, x_row, rows, kw0, KW, ASM, MAGIC, NG, EVEN)
            words, s, zf = nxt_w, nxt_s, nxt_z
    else:
        for i in range(STEPS):
            kw0 = kw_first + i * (NG * 16)
            words, s, zf = _load_step(w_ptr, s_ptr, z_ptr, rows, n_mask, kw0, KW, G, ONE, HAS_ZP, NG, EVEN)
            acc = _step_packed(acc, words, s, zf, x_row, rows, kw0, KW, ASM, MAGIC, NG, EVEN)
    pdl_release(PDL)
    write_rows(tl.sum(tl.sum(acc, axis=2), axis=1), out_ptr, ws_ptr, cnt_ptr, rows, n_mask, M, N, SPLIT, SPLIT_P2)


@dataclass(frozen=True)
class GemvConfig:
    """One launch: rows per program, groups per K step, split-K, register double buffering, warps."""

    block_n: int = 16
    ng: int = 4
    split: int = 1
    prefetch: bool = True
    num_warps: int = 4


TUNED_CONFIGS = Path(__file__).with_name("w4a16_gemv_configs.json")


_tuned = functools.partial(tuned_table, TUNED_CONFIGS)


def _device_info(index: int) -> tuple[int, str]:
    """(SM count, name) of CUDA device `index` (device.device_info, cached)."""
    info = device_info(torch.device("cuda", index))
    return info.sms, info.name


# Decode GEMV up to this M when a card has no tuned table (measured on an H200: the packed GEMV beats the
# tensor-core kernels at M = 1 only; each extra row costs about one M = 1 call).
GEMV_MAX_M = 1


def gemv_plan(m: int, n: int, k: int, sms: int, device_name: str = "") -> GemvConfig | None:
    """The tuned launch for this card / shape / M; else, for M <= GEMV_MAX_M, about 8 programs per SM; None
    where this kernel is not the one to run (larger M)."""
    table = card_rows(_tuned(), device_name, f"{n}x{k}g128")
    if table is not None:
        return GemvConfig(**table[str(m)]) if str(m) in table else None  # type: ignore[arg-type]
    if m > GEMV_MAX_M:
        return None
    cfg = GemvConfig()
    tiles = -(-n // cfg.block_n) * m
    steps = -(-k // (cfg.ng * 128))
    split = max(1, min(steps, -(-8 * sms // tiles)))
    return GemvConfig(split=split)


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def _counters(device: torch.device, size: int) -> torch.Tensor:
    """Zeroed int32 split-K counters, left zero by every launch (so CUDA graph replays reuse them)."""
    buf = _COUNTERS.get(device)
    if buf is None or buf.numel() < size:
        buf = torch.zeros(max(size, 8192), dtype=torch.int32, device=device)
        _COUNTERS[device] = buf
    return buf


def launch_geometry(
    words: int, step_words: int, want_split: int, block_n: int, m: int, n: int, result: torch.Tensor
) -> tuple[int, int, tuple[int, int, int], bool, torch.Tensor, torch.Tensor]:
    """K steps per program, split-K, grid, whether every tile is full (EVEN: no masks), the split-K workspace and
    counters, for a row of `words` words read `step_words` at a time."""
    total_steps = -(-words // step_words)
    steps = -(-total_steps // max(1, min(want_split, total_steps)))
    split = -(-total_steps // steps)
    grid = (triton.cdiv(n, block_n), split, m)
    even = n % block_n == 0 and words % step_words == 0 and total_steps % split == 0
    ws = torch.empty((split, m, n), dtype=torch.float32, device=result.device) if split > 1 else result
    return steps, split, grid, even, ws, _counters(result.device, grid[0] * m)


def supports(k: int, groups: int, group_size: int) -> bool:
    """This kernel takes group size 128 (16 words a group), K a multiple of 8."""
    return k % 8 == 0 and group_size == 128 and groups == -(-k // 128)


def w4a16_gemv(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    *,
    config: GemvConfig | None = None,
    out: torch.Tensor | None = None,
    permuted: bool = False,
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T for group size 128 on the pack-quantized layout; x [..., K] fp16/bf16.

    permuted must be True: the words went through permute_nibbles (the caller says so explicitly)."""
    k = x.shape[-1]
    n = weight_packed.shape[0]
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    if config is None:
        index = x.device.index if x.device.index is not None else torch.cuda.current_device()
        config = gemv_plan(m, n, k, *(_device_info(index) if x.is_cuda else (132, "")))
    kw = k // 8
    steps, split, grid, even, ws, cnt = launch_geometry(kw, config.ng * 16, config.split, config.block_n, m, n, result)
    has_zp = weight_zero_point is not None
    if not permuted:
        raise ValueError("w4a16_gemv reads words permuted by permute_nibbles (w4a16.prepare does it at load)")
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    asm, magic = _DOT_WORD[dt], _MAGIC[dt]
    xt = x2.contiguous().view(torch.int64)  # [M, 2 KW]: pairs (x[8w + 2i], x[8w + 2i + 1]), two a word
    pdl = pdl_mode(x.device)
    _gemv_kernel[grid](
        xt, weight_packed, weight_scale, weight_zero_point if has_zp else weight_scale, result, ws, cnt,
        m, n, kw, weight_scale.shape[1], steps, split, x2.stride(0), 1,
        HAS_ZP=has_zp, PREFETCH=config.prefetch, BLOCK_N=config.block_n, NG=config.ng,
        SPLIT_P2=1 << max(0, (split - 1).bit_length()), EVEN=even, ASM=asm, MAGIC=magic, PDL=pdl,
        num_warps=config.num_warps, num_stages=1, launch_pdl=bool(pdl),
    )
    return result
