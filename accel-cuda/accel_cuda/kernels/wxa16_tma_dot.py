"""Weight-only int4 / int8 linear on the tensor cores with TMA-pipelined loads (Hopper, sm_90), for M up to 128.

Swap-AB: each program computes out^T tile [BLOCK_N weight rows, BLOCK_M activation rows] += W tile [BLOCK_N, BK] @
x^T tile [BK, BLOCK_M], BK = 128 NG (NG quantization groups of 128 per K step), so M of 3 to 16 pads only x's side
up to the dot's minimum of 16 and the weights fill the 64-row side of Hopper's wgmma. Every load of the loop goes
through a tensor descriptor inside `tl.range(num_stages=STAGES)`, which Triton's pipeliner turns into TMA copies
STAGES - 1 steps ahead (the register kernels of w4a16.py wait on each step's loads: 1.0x bf16 at best,
KERNEL_NOTES.md):

- 4-bit: the words permute_nibbles left in [N, K/8] (the decode GEMV's layout, so one copy serves every M), box
  [BLOCK_N, 16 NG]; each pair of codes becomes a half-precision pair (q - zp) * s by four PTX instructions
  (_PAIR_ASM), in registers the dot reads as its A operand. `pairs=False` (and the interpreter) take the fp32 route
  instead: q - zp by the 2^23 magic (w4a16._codes8), times the scale, rounded once, re-interleaved to K order
  (w4a16._interleave8); about twice the instructions (KERNEL_NOTES.md).
- 8-bit: int8 codes [N, K] (any bit width up to 8, unpacked, as the runtime's dequant_linear holds them), box
  [BLOCK_N, BK]; (q - zp) * s rounded once to x's dtype, as the reference dequantizes.
- Group scales [N, K/128]: a TMA box row must be at least 16 bytes, so the box is [BLOCK_N, 8] (16 for int8 zero
  points) around the step's groups and the step's NG columns are picked in registers; consecutive steps read the
  same 16 bytes again from L2, so device-memory traffic is unchanged. Per-channel scales (8-bit) load once and
  multiply the fp32 accumulator at the end (the codes then stay exact in the dot).
- x [M, K] through a descriptor too (rows past M arrive as zeros); out^T tiles are stored transposed into [M, N].
  Split-K partials go to an fp32 workspace and the last program of a tile sums them (w4a16_gemv's counters), so a
  call is one launch.

Launched with programmatic dependent launch on Hopper (pdl.py): wait before the first load, release after the K loop.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.tuning import card_rows, tuned_table
from accel_cuda.kernels.w4a16 import _codes8, _interleave8
from accel_cuda.kernels.w4a16_gemv import _counters

__all__ = ["TmaDotConfig", "supports_tma_dot", "tma_dot_plan", "wxa16_tma_dot"]

GROUP = 128
# Under Triton's interpreter (TRITON_INTERPRET=1) the kernel runs on CPU tensors; inline PTX cannot, so the
# fp32 route dequantizes there.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

# Two codes of one permuted word (permute_nibbles: slot pair (i, i + 4) holds codes 2i, 2i + 1) to two half-precision
# values (q - zp) * s in one int32 (code 2i in the low half): $1 the word, $2 the shift 4i, $3 the pair 8 + zp + magic,
# $4 the pair of scales. (w >> 4i) & 0x000F000F | magic is the pair magic + u exactly (magic 128 for bf16, 1024 for
# fp16, whose unit in the last place is 1); subtracting 8 + zp + magic gives q - zp exactly, and one multiply rounds
# (q - zp) * s once, as the fp32 route's final cast does. Four instructions per two codes.
_PAIR_TEMPLATE = """{
.reg .b32 t;
shr.u32 t, $1, $2;
lop3.b32 t, t, 0x000F000F, MAGIC2, 0xEA;
sub.rn.TYPEx2 t, t, $3;
mul.rn.TYPEx2 $0, t, $4;
}"""
_PAIR_ASM = {
    "bf16": _PAIR_TEMPLATE.replace("MAGIC2", "0x43004300").replace("TYPE", "bf16"),
    "fp16": _PAIR_TEMPLATE.replace("MAGIC2", "0x64006400").replace("TYPE", "f16"),
}
_MAGIC = {"bf16": 128.0, "fp16": 1024.0}
# fp32 -> the same value twice as a half-precision pair in one int32.
_CVT_PAIR = {"bf16": "cvt.rn.bf16x2.f32 $0, $1, $1;", "fp16": "cvt.rn.f16x2.f32 $0, $1, $1;"}


@triton.jit
def _pair_of(v, CVT: tl.constexpr):
    """fp32 tensor -> int32 tensor holding each value twice in x's half-precision type."""
    return tl.inline_asm_elementwise(CVT, "=r,r", [v], dtype=tl.int32, is_pure=True, pack=1)


@triton.jit
def _pick_groups(box, g0, BLOCK_N: tl.constexpr, BOX: tl.constexpr, NG: tl.constexpr):
    """The NG columns g0 % BOX .. + NG of a [BLOCK_N, BOX] box loaded at column (g0 // BOX) * BOX, as fp32
    [BLOCK_N, NG] (BOX a multiple of NG, NG a power of two)."""
    if NG == BOX:
        return box.to(tl.float32)
    parts = tl.reshape(box.to(tl.float32), (BLOCK_N, BOX // NG, NG))
    hit = tl.arange(0, BOX // NG)[None, :, None] == (g0 % BOX) // NG
    return tl.sum(tl.where(hit, parts, 0.0), axis=1)


@triton.jit
def _write_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, cols, M, N, SPLIT):
    """Store acc [BLOCK_N, BLOCK_M] (rows of W, rows of x) at out[cols, rows]. With split-K the partials go to the
    fp32 workspace [SPLIT, M, N] and the last program of the tile (a counter it resets, so CUDA graph replays reuse
    it) sums them."""
    offs = cols[None, :] * N + rows[:, None]
    mask = (cols < M)[None, :]
    if SPLIT == 1:
        tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ws_ptr + tl.program_id(1) * M * N + offs, acc, mask=mask)
        tl.debug_barrier()
        cnt = cnt_ptr + tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)
        done = tl.atomic_add(cnt, 1, sem="acq_rel")
        if done == SPLIT - 1:
            total = tl.zeros_like(acc)
            for sp in range(SPLIT):
                total += tl.load(ws_ptr + sp * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)
            tl.atomic_xchg(cnt, 0)


@triton.jit(do_not_specialize=["M", "N", "STEPS", "SPLIT"])
def _tma_dot_kernel(
    x_desc, w_desc, s_desc, z_desc, s_ptr, z_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, STEPS, SPLIT,
    BITS: tl.constexpr, HAS_ZP: tl.constexpr, PER_CHANNEL: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, NG: tl.constexpr, SBOX: tl.constexpr, ZBOX: tl.constexpr,
    STAGES: tl.constexpr, PAIRS: tl.constexpr, ASM: tl.constexpr, MAGIC: tl.constexpr, CVT: tl.constexpr,
    PDL: tl.constexpr,
):
    BK: tl.constexpr = NG * 128
    row0 = tl.program_id(0) * BLOCK_N
    m0 = tl.program_id(2) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_N)
    g_first = tl.program_id(1) * STEPS * NG
    dt = out_ptr.dtype.element_ty
    pdl_enter(PDL)
    if PER_CHANNEL:  # one scale (and zero point) per row for all of K
        s_row = tl.load(s_ptr + rows).to(tl.float32)
        zp_row = tl.load(z_ptr + rows).to(tl.float32) if HAS_ZP else tl.zeros_like(s_row)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for i in tl.range(STEPS, num_stages=STAGES):
        g0 = g_first + i * NG
        xt = x_desc.load([m0, g0 * 128])  # [BLOCK_M, BK]
        if BITS == 4:
            words = tl.reshape(w_desc.load([row0, g0 * 16]), (BLOCK_N, NG, 16))
        else:
            codes = tl.reshape(w_desc.load([row0, g0 * 128]), (BLOCK_N, NG, 128)).to(tl.float32)
        if PER_CHANNEL:
            a = (codes - zp_row[:, None, None]).to(dt)
        else:
            s = _pick_groups(s_desc.load([row0, (g0 // SBOX) * SBOX]), g0, BLOCK_N, SBOX, NG)[:, :, None]
            if HAS_ZP:
                zp = _pick_groups(z_desc.load([row0, (g0 // ZBOX) * ZBOX]), g0, BLOCK_N, ZBOX, NG)[:, :, None]
            else:
                zp = tl.zeros((BLOCK_N, NG, 1), dtype=tl.float32)
            if BITS == 4 and PAIRS:
                # One asm instance per (word, code pair): the pair (codes 2i, 2i + 1) as two half-precision values in
                # one int32, from the word, the shift 4i and its group's (8 + zp + magic, scale) each packed once
                # per row and group; the halves are then split and joined back in K order.
                zs = _pair_of(zp + (8.0 + MAGIC), CVT)[:, :, :, None]  # [BLOCK_N, NG, 1, 1]
                ss = _pair_of(s, CVT)[:, :, :, None]
                shape4: tl.constexpr = (BLOCK_N, NG, 16, 4)
                pairs = tl.inline_asm_elementwise(
                    ASM, "=r,r,r,r,r",
                    [tl.broadcast_to(words[:, :, :, None], shape4),
                     tl.broadcast_to((tl.arange(0, 4) * 4)[None, None, None, :], shape4),
                     tl.broadcast_to(zs, shape4), tl.broadcast_to(ss, shape4)],
                    dtype=tl.int32, is_pure=True, pack=1)
                lo = (pairs & 0xFFFF).to(tl.uint16).to(dt, bitcast=True)
                hi = (pairs >> 16).to(tl.uint16).to(dt, bitcast=True)
                a = tl.join(lo, hi)  # [BLOCK_N, NG, 16, 4, 2]: code 8w + 2i + h
            elif BITS == 4:
                v0, v1, v2, v3, v4, v5, v6, v7 = _codes8(words, zp + 8.0, True)
                a = _interleave8(tl.reshape((v0 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v1 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v2 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v3 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v4 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v5 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v6 * s).to(dt), (BLOCK_N, BK // 8)),
                                 tl.reshape((v7 * s).to(dt), (BLOCK_N, BK // 8)), BLOCK_N, BK)
            else:
                a = ((codes - zp) * s).to(dt)
        acc = tl.dot(tl.reshape(a, (BLOCK_N, BK)), tl.trans(xt), acc)
    pdl_release(PDL)
    if PER_CHANNEL:
        acc = acc * s_row[:, None]
    _write_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, m0 + tl.arange(0, BLOCK_M), M, N, SPLIT)


@dataclass(frozen=True)
class TmaDotConfig:
    """One launch: weight rows and activation rows per program, groups of 128 per K step, split-K, pipeline
    stages, warps."""

    block_n: int = 64
    block_m: int = 16
    ng: int = 1
    split: int = 1
    stages: int = 4
    num_warps: int = 4
    pairs: bool = True  # 4-bit: code pairs in half precision (_PAIR_ASM); False: fp32 magic per code (slower)


TUNED_CONFIGS = Path(__file__).with_name("wxa16_tma_dot_configs.json")
_tuned = functools.partial(tuned_table, TUNED_CONFIGS)
# The tensor-core kernel's range for untuned shapes; M = 1, 2 stay on the decode GEMVs unless a sweep measured
# otherwise, larger M on dequantize-then-cuBLAS.
MIN_M, MAX_M = 3, 128


# (block_n, block_m, ng, stages, num_warps) that Triton 3.6 compiles into a racy kernel on the H200: the same call
# gives the right product in one run and NaN or a wrong one in the next (any split-K; session 12, KERNEL_NOTES.md).
# It is also the fastest launch at M = 128, so a sweep that checks once can pick it: it is never launched.
RACY = {(64, 128, 1, 3, 4)}


def _racy(config: TmaDotConfig) -> bool:
    return (config.block_n, config.block_m, config.ng, config.stages, config.num_warps) in RACY


def supports_tma_dot(n: int, k: int, groups: int, config: TmaDotConfig, bits: int, has_zp: bool = False) -> bool:
    """Full tiles only (no masks on weights), group size 128 (or per channel at 8 bits), TMA's 16-byte strides; not
    a RACY launch."""
    if _racy(config):
        return False
    steps = k // (config.ng * GROUP)
    if k % (config.ng * GROUP) or n % config.block_n or steps % max(1, config.split):
        return False
    if config.ng not in (1, 2, 4, 8) or config.block_m not in (16, 32, 64, 128):
        return False
    if groups == 1:
        return bits == 8
    return groups == k // GROUP and groups % 8 == 0 and (not has_zp or groups % 16 == 0)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def tma_dot_plan(m: int, n: int, k: int, bits: int, device_name: str, capability: tuple[int, int],
                 sms: int) -> TmaDotConfig | None:
    """The launch measured best for this card / shape / M / bit width (bench/kernels_tma_dot.py --write-table),
    else a heuristic (activation tile the next power of two >= M, split-K to about two programs per SM); None off
    Hopper, above MAX_M, and for 4 bits below MIN_M unless the table has that very M (the sweep writes M = 1, 2
    only where this kernel beat the decode GEMV)."""
    if capability[0] != 9 or m > MAX_M:
        return None
    table = card_rows(_tuned(), device_name, f"w{bits}:{n}x{k}") or {}
    tuned = {int(key): TmaDotConfig(**entry) for key, entry in table.items()}  # type: ignore[arg-type]
    tuned = {key: cfg for key, cfg in tuned.items() if not _racy(cfg)}  # tables written before RACY was known
    if bits == 4 and m < MIN_M:
        return tuned.get(m)
    fits = sorted(key for key in tuned if key >= m)
    if fits:
        return tuned[fits[0]]
    bm = min(max(16, _pow2_at_least(m)), 128)
    bn = 128 if bm >= 64 else 64
    tiles = -(-n // bn) * -(-m // bm)
    steps = k // GROUP
    want = max(1, min(steps, -(-2 * sms // tiles)))
    split = next(s for s in range(want, 0, -1) if steps % s == 0)
    return TmaDotConfig(block_n=bn, block_m=bm, ng=1, split=split, stages=4, num_warps=8 if bm >= 64 else 4)


def wxa16_tma_dot(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    *,
    bits: int,
    config: TmaDotConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T, x [..., K] fp16/bf16. bits 4: permute_nibbles' words [N, K/8]; bits 8: int8
    codes [N, K]. Scales [N, K/128] (or [N, 1] per channel, 8-bit) in x's dtype; zero points int8 of the same
    shape or None (symmetric)."""
    k = x.shape[-1]
    n = weight.shape[0]
    groups = weight_scale.shape[1]
    has_zp = weight_zero_point is not None
    if not supports_tma_dot(n, k, groups, config, bits, has_zp):
        raise ValueError(f"wxa16_tma_dot: {bits}-bit {n}x{k} with {groups} scale groups does not tile with {config}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if not x2.is_contiguous() or x2.data_ptr() % 16:
        x2 = x2.contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    bn, bm, ng = config.block_n, config.block_m, config.ng
    steps_total = k // (ng * GROUP)
    split = max(1, min(config.split, steps_total))
    grid = (n // bn, split, triton.cdiv(m, bm))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else result
    cnt = _counters(x.device, grid[0] * grid[2])
    per_channel = groups == 1
    x_desc = TensorDescriptor.from_tensor(x2, [bm, ng * GROUP])
    w_desc = TensorDescriptor.from_tensor(weight, [bn, ng * 16] if bits == 4 else [bn, ng * GROUP])
    sbox, zbox = max(8, ng), max(16, ng)
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    if per_channel:
        s_desc = z_desc = w_desc  # unused
    else:
        s_desc = TensorDescriptor.from_tensor(weight_scale, [bn, sbox])
        z_desc = TensorDescriptor.from_tensor(weight_zero_point, [bn, zbox]) if has_zp else s_desc
    pdl = pdl_mode(x.device)
    _tma_dot_kernel[grid](
        x_desc, w_desc, s_desc, z_desc, weight_scale, weight_zero_point if has_zp else weight_scale, result, ws, cnt,
        m, n, steps_total // split, split,
        BITS=bits, HAS_ZP=has_zp, PER_CHANNEL=per_channel, BLOCK_N=bn, BLOCK_M=bm, NG=ng, SBOX=sbox, ZBOX=zbox,
        STAGES=config.stages, PAIRS=config.pairs and bits == 4 and not INTERPRET, ASM=_PAIR_ASM[dt],
        MAGIC=_MAGIC[dt], CVT=_CVT_PAIR[dt], PDL=pdl, num_warps=config.num_warps, launch_pdl=bool(pdl),
    )
    return result
