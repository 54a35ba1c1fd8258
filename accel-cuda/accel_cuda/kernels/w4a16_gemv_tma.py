"""W4A16 decode GEMV with TMA-pipelined loads (Hopper, sm_90): the permuted words and the scales of each K step
arrive through tensor descriptors into shared memory STAGES steps ahead (Triton's software pipeliner owns the
buffers and mbarriers; the activations follow by cp.async), so many bytes are in flight per SM without holding
them in registers. The register-prefetch GEMV (w4a16_gemv.py) waits on every step's loads: 2.4x its byte floor.

Same words and dequantization as w4a16_gemv.py (_DOT_WORD): each step's words arrive as a 2-D box [BLOCK_N, 16 NG]
of [N, K/8] (rows of NG x 64 contiguous bytes) and are viewed as [BLOCK_N, NG, 4 chains, 4 words] in registers;
group scales (and 8 + zero point in the scales' dtype, when a caller prepares it) through a 2-D descriptor [N,
K/128], so NG * 2 bytes must reach TMA's 16-byte minimum: NG >= 8. One inline-PTX instance (_DOT_CHAIN) takes a
chain of CHAIN = 4 consecutive words: the 16 pair products accumulate in one half-precision x2 register before its
two lanes go to fp32 and the group scale multiplies, so the lane sum and the scale FMA are paid once per 4 words
(H200, M=1: gate+up 21.6 -> 18.9 us; relative error against float64 3.1e-3 -> 5.0e-3 in bf16, within METHOD.md's
1e-2 bound). Launched with PDL on Hopper (pdl.py). Measured versions: accel-cuda/KERNEL_NOTES.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from accel_cuda.kernels.act import _silu_and_mul
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.tuning import card_rows, tuned_table
from accel_cuda.kernels.w4a16_gemv import _DOT_WORD_TEMPLATE, _MAGIC, launch_geometry, write_rows

__all__ = ["RopeKV", "TmaGemvConfig", "rope_tiles", "supports_tma", "tma_plan", "w4a16_tma_gemv"]


_CHAIN = 4  # words per half-precision accumulation chain
CHAIN = tl.constexpr(_CHAIN)


def _dot_chain(dtype: str) -> str:
    """_DOT_WORD's arithmetic for CHAIN words in one instance: operands $0 (fp32 out), $1..$4 (words), $5 (8 + zp +
    magic), then two 64-bit activation-pair registers per word; the first pair product starts the chain (mul), every
    later one continues it (fma), the lanes go to fp32 once."""
    word = _DOT_WORD_TEMPLATE[_DOT_WORD_TEMPLATE.index("shr.u32"):_DOT_WORD_TEMPLATE.index("mov.b32 {lo, hi}")]
    zero = _DOT_WORD_TEMPLATE[_DOT_WORD_TEMPLATE.index("cvt.rn"):_DOT_WORD_TEMPLATE.index("sub.rn")]
    word = word.replace(zero, "")
    body = "{\n.reg .b32 s1, s2, s3, t0, t1, t2, t3, z, d, x0, x1, x2, x3;\n.reg .b16 lo, hi;\n.reg .f32 flo, fhi;\n"
    body += f"cvt.rn.TYPEx2.f32 z, ${_CHAIN + 1}, ${_CHAIN + 1};\n"
    for w in range(_CHAIN):
        xa, xb = _CHAIN + 2 + 2 * w, _CHAIN + 3 + 2 * w
        step = word.replace("$1", f"${1 + w}")
        if w:
            step = step.replace("mul.rn.TYPEx2 d, t0, x0;", "fma.rn.TYPEx2 d, t0, x0, d;")
        body += f"mov.b64 {{x0, x1}}, ${xa};\nmov.b64 {{x2, x3}}, ${xb};\n" + step
    body += _DOT_WORD_TEMPLATE[_DOT_WORD_TEMPLATE.index("mov.b32 {lo, hi}"):]
    magic = {"bf16": "0x43004300", "fp16": "0x64006400"}[dtype]
    return body.replace("MAGIC2", magic).replace("TYPE", {"bf16": "bf16", "fp16": "f16"}[dtype])


_DOT_CHAIN = {dtype: _dot_chain(dtype) for dtype in ("bf16", "fp16")}
_CHAIN_CONSTRAINTS = "=f," + ",".join(["r"] * _CHAIN) + ",f," + ",".join(["l"] * (2 * _CHAIN))


@triton.jit
def _tile_step(w_desc, s_desc, z_desc, row0, g0, x0, x1, x2, x3, x4, x5, x6, x7,
               HAS_ZP: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, ASM: tl.constexpr,
               CONSTRAINTS: tl.constexpr, MAGIC: tl.constexpr):
    """One K step of rows row0 .. + BLOCK_N: their words' pair products with x's pairs x0..x7 (each [1, NG, 4
    chains]) summed per chain, times the group scales: [BLOCK_N, NG, 4] float32."""
    # words 4c + (0, 1, 2, 3) of each group's chain c: split the two minor bits of the word index off
    even, odd = w_desc.load([row0, g0 * 16]).reshape(BLOCK_N, NG, 16 // CHAIN, 2, 2).split()
    w0, w2 = even.split()
    w1, w3 = odd.split()
    s = s_desc.load([row0, g0]).to(tl.float32)
    zf = z_desc.load([row0, g0]).to(tl.float32) if HAS_ZP else tl.full((BLOCK_N, NG), 8.0, tl.float32)  # 8 + zp
    zb = tl.broadcast_to((zf + MAGIC)[:, :, None], (BLOCK_N, NG, 16 // CHAIN))
    part = tl.inline_asm_elementwise(
        ASM, CONSTRAINTS, [w0, w1, w2, w3, zb, x0, x1, x2, x3, x4, x5, x6, x7],
        dtype=tl.float32, is_pure=True, pack=1)
    return part * s[:, :, None]


@triton.jit
def _mul_rn(a, b):
    """a * b in float32, never contracted with what follows (PTX's mul.rn is exempt from fma contraction)."""
    return tl.inline_asm_elementwise("mul.rn.f32 $0, $1, $2;", "=r,r,r", [a, b], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _rope_kv_epilogue(y1, y2, cos1, cos2, sin1, sin2, pos, q_ptr, kc_ptr, vc_ptr, m, b, head, cols, S, H, HKV,
                      stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, HALF: tl.constexpr):
    """One token's columns `cols` and cols + HALF of head `head` of the fused q | k | v output (y1, y2 float32):
    rounded to the output's dtype as the linear's output is, q and k heads rotated as rope._rotate_heads rotates
    (each product rounded, then the sum), q stored into q_ptr [M, H, 2 HALF], k and v into the 16-bit cache at
    (b, head, pos); a position outside [0, S) is skipped, as kv_write.py skips it."""
    dt = q_ptr.dtype.element_ty
    x1 = y1.to(dt).to(tl.float32)
    x2 = y2.to(dt).to(tl.float32)
    if head < H + HKV:  # mul.rn: each product rounded on its own (fp fusion would make one half-precision FMA of it)
        out1 = _mul_rn(x1, cos1).to(dt).to(tl.float32) - _mul_rn(x2, sin1).to(dt).to(tl.float32)
        out2 = _mul_rn(x2, cos2).to(dt).to(tl.float32) + _mul_rn(x1, sin2).to(dt).to(tl.float32)
    else:
        out1 = x1
        out2 = x2
    if head < H:
        dst = q_ptr + (m * H + head) * 2 * HALF + cols
        tl.store(dst, out1.to(dt))
        tl.store(dst + HALF, out2.to(dt))
    else:
        ok = (pos >= 0) & (pos < S)
        at = tl.where(ok, pos, 0)
        if head < H + HKV:
            dst = kc_ptr + b * stride_kb + (head - H) * stride_kh + at * stride_ks + cols
        else:
            dst = vc_ptr + b * stride_vb + (head - H - HKV) * stride_vh + at * stride_vs + cols
        tl.store(dst, out1.to(dt), mask=ok & (cols >= 0))
        tl.store(dst + HALF, out2.to(dt), mask=ok & (cols >= 0))


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT"])
def _gemv_tma_kernel(
    x_ptr, w_desc, s_desc, z_desc, out_ptr, ws_ptr, cnt_ptr, res_ptr, nw_ptr, hw_ptr, ss_ptr, P, eps,
    cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, T, S, H, HKV, stride_cb, stride_ct, stride_pb, stride_pt,
    stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs,
    M, N, KW, G, STEPS, SPLIT,
    HAS_ZP: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_P2: tl.constexpr, ASM: tl.constexpr,
    CONSTRAINTS: tl.constexpr, MAGIC: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
    RESIDUAL: tl.constexpr, RMS: tl.constexpr, P_P2: tl.constexpr, SILU: tl.constexpr, HALF: tl.constexpr,
):
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    if HALF:  # ROPE: rows i and i + HALF of one head, BLOCK_N of each (HALF / BLOCK_N programs a head)
        head = tl.program_id(0) // (HALF // BLOCK_N)
        col0 = (tl.program_id(0) % (HALF // BLOCK_N)) * BLOCK_N
        row0 = head * 2 * HALF + col0
        row_b = row0 + HALF
    else:
        row0 = tl.program_id(0) * BLOCK_N
        row_b = N + row0  # SILU: the up rows, I rows below the gate rows
    rows = row0 + tl.arange(0, BLOCK_N)
    x_row = x_ptr + pid_m * 2 * KW
    g_first = pid_s * STEPS * NG
    pdl_enter(PDL)
    if RMS:  # the partial sums of h^2 of this row (P floats), loaded before the loop: the latency hides behind it
        pp = tl.arange(0, P_P2)
        ss = tl.load(ss_ptr + pid_m * P + pp, mask=pp < P, other=0.0)
    if RESIDUAL:  # the epilogue's operands, likewise loaded ahead (the norm weight comes from device memory)
        res = tl.load(res_ptr + pid_m * N + rows).to(tl.float32)
        nw = tl.load(nw_ptr + rows).to(tl.float32)
    if HALF:  # RoPE's operands, likewise: this token's cos / sin at the program's columns and its cache position
        b = pid_m // T
        t = pid_m % T
        cols = col0 + tl.arange(0, BLOCK_N)
        cos_row = cos_ptr + b * stride_cb + t * stride_ct
        sin_row = sin_ptr + b * stride_cb + t * stride_ct
        cos1, cos2 = tl.load(cos_row + cols).to(tl.float32), tl.load(cos_row + HALF + cols).to(tl.float32)
        sin1, sin2 = tl.load(sin_row + cols).to(tl.float32), tl.load(sin_row + HALF + cols).to(tl.float32)
        pos = tl.load(pos_ptr + b * stride_pb + t * stride_pt).to(tl.int64)
    gi = tl.arange(0, NG)
    ci = tl.arange(0, 16 // CHAIN)
    acc = tl.zeros((BLOCK_N, NG, 16 // CHAIN), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N, NG, 16 // CHAIN), dtype=tl.float32)  # SILU / ROPE: the second tile's rows
    for i in tl.range(STEPS, num_stages=STAGES):
        g0 = g_first + i * NG
        # word kw's activation pairs are x64[2 kw], x64[2 kw + 1]; chain c starts at word 16 g + 4 c
        xw = x_row + ((g0 + gi)[:, None] * 16 + ci[None, :] * CHAIN) * 2
        x0, x1, x2, x3 = tl.load(xw)[None], tl.load(xw + 1)[None], tl.load(xw + 2)[None], tl.load(xw + 3)[None]
        x4, x5, x6, x7 = tl.load(xw + 4)[None], tl.load(xw + 5)[None], tl.load(xw + 6)[None], tl.load(xw + 7)[None]
        acc += _tile_step(w_desc, s_desc, z_desc, row0, g0, x0, x1, x2, x3, x4, x5, x6, x7,
                          HAS_ZP, BLOCK_N, NG, ASM, CONSTRAINTS, MAGIC)
        if SILU or HALF:
            acc_up += _tile_step(w_desc, s_desc, z_desc, row_b, g0, x0, x1, x2, x3, x4, x5, x6, x7,
                                 HAS_ZP, BLOCK_N, NG, ASM, CONSTRAINTS, MAGIC)
    pdl_release(PDL)
    y = tl.sum(tl.sum(acc, axis=2), axis=1)
    if RMS:  # r = 1 / sqrt(sum(ss) / K + eps) times this row's dot products (linear: before or after split-K's sum)
        r = tl.rsqrt(tl.sum(ss, axis=0) / (KW * 8) + eps)
        y = y * r
    if SILU or HALF:
        up = tl.sum(tl.sum(acc_up, axis=2), axis=1)
        if RMS:
            up = up * r
    if SILU:  # split 1 only: out = silu(gate) * up of the two tiles, each rounded first as the linear's output
        dt = out_ptr.dtype.element_ty
        tl.store(out_ptr + pid_m * N + rows, _silu_and_mul(y.to(dt), up.to(dt)))
    elif HALF:  # split 1 only: q / k rotated (rope.py's arithmetic on the linear's rounded outputs), k and v stored
        _rope_kv_epilogue(y, up, cos1, cos2, sin1, sin2, pos, out_ptr, kc_ptr, vc_ptr, pid_m, b, head, cols, S, H,
                          HKV, stride_kb, stride_kh, stride_ks, stride_vb, stride_vh, stride_vs, HALF)
    elif RESIDUAL:  # split 1 only: h = y (rounded as the linear's output) + residual, h * w of the next norm, and
        # this program's partial sum of h^2 (of h as rounded) at column pid_n of ss [M, P = N / BLOCK_N]
        dt = out_ptr.dtype.element_ty
        offs = pid_m * N + rows
        h = (y.to(dt).to(tl.float32) + res).to(dt)
        tl.store(out_ptr + offs, h)
        tl.store(hw_ptr + offs, (h.to(tl.float32) * nw).to(dt))
        hf = h.to(tl.float32)
        tl.store(ss_ptr + pid_m * P + tl.program_id(0), tl.sum(hf * hf, axis=0))
    else:
        write_rows(y, out_ptr, ws_ptr, cnt_ptr, rows, rows < N, M, N, SPLIT, SPLIT_P2)


@dataclass(frozen=True)
class TmaGemvConfig:
    """One launch: rows per program, groups of 128 inputs per K step (>= 8), split-K, pipeline stages, warps."""

    block_n: int = 16
    ng: int = 8
    split: int = 1
    stages: int = 3
    num_warps: int = 4


TUNED_CONFIGS = Path(__file__).with_name("w4a16_gemv_tma_configs.json")


_tuned = functools.partial(tuned_table, TUNED_CONFIGS)


def tma_plan(m: int, n: int, k: int, device_name: str, capability: tuple[int, int]) -> TmaGemvConfig | None:
    """The measured launch for this card / shape / M (bench/kernels_tma.py --write-table); None where no run on
    this card tuned it, off Hopper (TMA and the bf16x2 forms need sm_90), or where it does not tile."""
    if capability[0] != 9:
        return None
    entry = (card_rows(_tuned(), device_name, f"{n}x{k}g128") or {}).get(str(m))
    if entry is None:
        return None
    config = TmaGemvConfig(**entry)  # type: ignore[arg-type]
    return config if supports_tma(n, k, config) else None


@dataclass(frozen=True)
class RopeKV:
    """The RoPE + 16-bit KV cache write epilogue's operands (op w4a16_linear_rope_kv): cos / sin [B or 1, T, D]
    (the same strides, last dimension contiguous), positions [B, T], q_out [B, T, H, D] (contiguous, written),
    k_cache / v_cache [B' >= B, Hkv, S, D] in x's dtype (last dimension contiguous, written at positions), H q heads.
    The weight's rows are q | k | v: (H + 2 Hkv) D."""

    cos: torch.Tensor
    sin: torch.Tensor
    positions: torch.Tensor
    q_out: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    num_heads: int

    @property
    def head_dim(self) -> int:
        return self.cos.shape[-1]

    @property
    def tokens(self) -> int:
        """T, tokens per batch row."""
        return self.positions.shape[1]

    def tiles(self, n: int, config: TmaGemvConfig) -> bool:
        """Whether a launch of `config` runs this epilogue over n weight rows: split 1, half tiles of block_n / 2 rows
        dividing D / 2, n = (H + 2 Hkv) D with Hkv the cache's heads."""
        return rope_tiles(n, self.head_dim, self.num_heads, self.k_cache.shape[1], config)

    @staticmethod
    def unused(like: torch.Tensor) -> RopeKV:
        """Placeholder operands for launches without the epilogue (never read)."""
        cache = like.new_empty((1, 1, 1, 1))
        table = like.new_empty((1, 1, 1))
        return RopeKV(table, table, like.new_empty((1, 1), dtype=torch.int64), like, cache, cache, 0)


def rope_tiles(n: int, head_dim: int, num_heads: int, kv_heads: int, config: TmaGemvConfig) -> bool:
    """The RoPE epilogue's tiling (RopeKV.tiles): split 1, block_n / 2 rows dividing head_dim / 2, n = (H + 2 Hkv) D."""
    half = config.block_n // 2
    return (config.split == 1 and config.block_n % 2 == 0 and head_dim % 2 == 0 and half > 0
            and (head_dim // 2) % half == 0 and kv_heads > 0 and n == (num_heads + 2 * kv_heads) * head_dim)


def supports_tma(n: int, k: int, config: TmaGemvConfig) -> bool:
    """Full tiles only (no masks in this kernel), Hopper's TMA alignment (scale rows of 8 groups' bytes)."""
    groups = k // 128
    return (k % 128 == 0 and config.ng >= 8 and n % config.block_n == 0 and groups % config.ng == 0
            and groups % 8 == 0 and (groups // config.ng) % max(1, config.split) == 0)


def w4a16_tma_gemv(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_plus8: torch.Tensor | None,
    *,
    config: TmaGemvConfig,
    out: torch.Tensor | None = None,
    pdl: int | None = None,
    residual: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    rms: tuple[torch.Tensor, float] | None = None,
    silu: bool = False,
    rope: RopeKV | None = None,
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T for group size 128 from permute_nibbles' words [N, K/8], scales [N, K/128] and,
    when asymmetric, 8 + zero point in the scales' dtype (None: symmetric); x [..., K] fp16/bf16. pdl: pdl.py's
    mode (default: pdl_mode of x's device).

    The norm folds (accel.runtime.norm_fold_ops), contiguous tensors: `residual` = (residual [..., N] and the next
    norm's weight [N] in x's dtype, hw_out [..., N], ss_out float32 [..., N / block_n]) returns h = y + residual,
    stores h * weight into hw_out and each program's sum of h^2 into ss_out (split 1 only); `rms` = (ss float32
    [..., P], eps) scales each row's y by 1 / sqrt(sum(ss) / K + eps). `silu` (SwiGLU folded in: N = 2I rows,
    gate then up, split 1) returns silu(y[..., :I]) * y[..., I:] [..., I], each half rounded to x's dtype first as
    silu_and_mul reads it; each program takes block_n / 2 gate rows and the up rows I below them. `rope` (RoPE and
    the 16-bit KV cache write folded in: the rows are q | k | v heads of head_dim D, split 1, block_n / 2 dividing
    D / 2) returns q rotated [B, T, H, D] and stores k rotated and v into the cache (RopeKV); each program takes
    block_n / 2 rows of a head's first half and the rows D / 2 below them, the pairs the rotation mixes."""
    k = x.shape[-1]
    n = weight_packed.shape[0]
    if not supports_tma(n, k, config):
        raise ValueError(f"w4a16_tma_gemv: shape {n}x{k} does not tile with {config}")
    if residual is not None and (config.split != 1 or residual[3].shape[-1] != n // config.block_n):
        raise ValueError(f"w4a16_tma_gemv: the residual epilogue needs split 1 and ss_out [..., {n} / block_n], got "
                         f"{config} and {tuple(residual[3].shape)}")
    if silu and (residual is not None or config.split != 1 or config.block_n % 2 or (n // 2) % (config.block_n // 2)):
        raise ValueError(f"w4a16_tma_gemv: the SwiGLU epilogue needs split 1, no residual, and N / 2 = {n // 2} a "
                         f"multiple of block_n / 2, got {config}")
    if rope is not None and (residual is not None or silu or not rope.tiles(n, config)):
        raise ValueError(f"w4a16_tma_gemv: the RoPE epilogue needs split 1, no other epilogue, and block_n / 2 "
                         f"dividing head_dim / 2, got {config} for {n} rows of head_dim {rope.head_dim}")
    halves = silu or rope is not None
    out_n = n // 2 if halves else n
    bn = config.block_n // 2 if halves else config.block_n
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if rope is not None:
        result = rope.q_out
    else:
        result = torch.empty((*lead, out_n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    kw, groups = k // 8, k // 128
    ng = config.ng
    steps, split, grid, _, ws, cnt = launch_geometry(kw, ng * 16, config.split, bn, m, out_n, result)
    w_desc = TensorDescriptor.from_tensor(weight_packed, [bn, ng * 16])
    s_desc = TensorDescriptor.from_tensor(weight_scale, [bn, ng])
    z_desc = TensorDescriptor.from_tensor(zero_plus8, [bn, ng]) if zero_plus8 is not None else s_desc
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    pdl = pdl_mode(x.device) if pdl is None else pdl
    res, nw, hw, ss = residual if residual is not None else (result, result, result, result)
    eps = 0.0
    if rms is not None:
        ss, eps = rms
    parts = ss.shape[-1] if residual is not None or rms is not None else 1
    r = rope if rope is not None else RopeKV.unused(result)
    kc, vc = r.k_cache, r.v_cache
    _gemv_tma_kernel[grid](
        x2.view(torch.int64), w_desc, s_desc, z_desc, result, ws, cnt, res, nw, hw, ss, parts, eps,
        r.cos, r.sin, r.positions, kc, vc, r.tokens, kc.shape[2], r.num_heads, kc.shape[1],
        r.cos.stride(0) if r.cos.shape[0] > 1 else 0, r.cos.stride(1), r.positions.stride(0), r.positions.stride(1),
        kc.stride(0), kc.stride(1), kc.stride(2), vc.stride(0), vc.stride(1), vc.stride(2),
        m, out_n, kw, groups, steps, split,
        HAS_ZP=zero_plus8 is not None, BLOCK_N=bn, NG=ng, SPLIT_P2=1 << max(0, (split - 1).bit_length()),
        ASM=_DOT_CHAIN[dt], CONSTRAINTS=_CHAIN_CONSTRAINTS, MAGIC=_MAGIC[dt], STAGES=config.stages, PDL=pdl,
        RESIDUAL=residual is not None, RMS=rms is not None, P_P2=triton.next_power_of_2(parts) if rms else 1,
        SILU=silu, HALF=rope.head_dim // 2 if rope is not None else 0,
        num_warps=config.num_warps, launch_pdl=bool(pdl),
    )
    return result
