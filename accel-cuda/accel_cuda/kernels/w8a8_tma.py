"""W8A8 (int8 or fp8 e4m3) linear on Hopper's 8-bit tensor cores with TMA-pipelined loads, for decode-sized M.

The codes go to wgmma as they are stored, so unlike the weight-only kernels (wxa16_tma_dot.py) nothing is
dequantized in the loop: each step is two TMA copies and one 8-bit wgmma. Swap-AB as there: a program computes
out^T [BLOCK_N weight rows, BLOCK_M tokens] = W [BLOCK_N, BK] @ x_q^T [BK, BLOCK_M], both operands K-major (the
only layout 8-bit wgmma takes; W [N, K] and the activation codes [M, K] are stored that way), so M = 1..16 pads
only the activations' side to the dot's 16 and the weights fill wgmma's 64-row side.

    y[m, n] = (sum_k x_q[m, k] w_q[n, k]) * s_x[m] * s_w[n] + bias[n]

The accumulator is int32 (int8, exact) or fp32 (e4m3); the scales, the bias and the cast are the epilogue.
Split-K partials (already scaled, fp32) are summed by the tile's last program (wxa16_tma_dot._write_tile), the
bias added once, by split 0. The activation codes and s_x come from w8a8.quantize_rows, as on every other path.
Launched with programmatic dependent launch on Hopper (pdl.py): wait before the first load, release after the K loop.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.tuning import card_rows, tuned_table
from accel_cuda.kernels.w4a16_gemv import _counters
from accel_cuda.kernels.wxa16_tma_dot import _write_tile

__all__ = ["W8TmaConfig", "supports_w8a8_tma", "w8a8_tma", "w8a8_tma_plan"]

BK = 128  # K per step: 128 bytes of 8-bit codes per row, one 128-byte-swizzled TMA box row


@triton.jit(do_not_specialize=["M", "N", "STEPS", "SPLIT"])
def _w8a8_tma_kernel(
    x_desc, w_desc, sx_ptr, sw_ptr, bias_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, STEPS, SPLIT,
    FP8: tl.constexpr, SW_PER_N: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, KU: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
):
    row0 = tl.program_id(0) * BLOCK_N
    m0 = tl.program_id(2) * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_N)
    cols = m0 + tl.arange(0, BLOCK_M)
    k_first = tl.program_id(1) * STEPS * 128
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32 if FP8 else tl.int32)
    for i in tl.range(STEPS // KU, num_stages=STAGES):  # KU boxes of 128 along K per iteration (one barrier round)
        for u in tl.static_range(KU):
            k0 = k_first + (i * KU + u) * 128
            w = w_desc.load([row0, k0])  # [BLOCK_N, 128] codes
            xt = x_desc.load([m0, k0])  # [BLOCK_M, 128] codes; rows past M arrive as zeros
            acc = tl.dot(w, tl.trans(xt), acc, out_dtype=tl.float32 if FP8 else tl.int32)
    pdl_release(PDL)
    sx = tl.load(sx_ptr + cols, mask=cols < M, other=0.0)
    sw = tl.load(sw_ptr + rows).to(tl.float32) if SW_PER_N else tl.load(sw_ptr + rows * 0).to(tl.float32)
    y = acc.to(tl.float32) * sw[:, None] * sx[None, :]
    if HAS_BIAS:
        first = (tl.program_id(1) == 0).to(tl.float32)  # split 0 adds the bias; the partials' sum then holds it once
        y += (tl.load(bias_ptr + rows).to(tl.float32) * first)[:, None]
    _write_tile(y, out_ptr, ws_ptr, cnt_ptr, rows, cols, M, N, SPLIT)


@dataclass(frozen=True)
class W8TmaConfig:
    """One launch: weight rows and tokens per program, split-K, pipeline stages, warps."""

    block_n: int = 128
    block_m: int = 16
    split: int = 1
    stages: int = 6
    num_warps: int = 4
    ku: int = 1  # 128-wide K boxes per loop iteration (1 or 2): 2 halves the barrier rounds per byte


TUNED_CONFIGS = Path(__file__).with_name("w8a8_tma_configs.json")
_tuned = functools.partial(tuned_table, TUNED_CONFIGS)
MAX_M = 64  # above, rowwise _scaled_mm / _int_mm (compute-bound sizes) win (KERNEL_NOTES.md)


def supports_w8a8_tma(n: int, k: int, config: W8TmaConfig) -> bool:
    """Whole tiles along N and K (no masks on the weights), split x ku dividing the K steps."""
    steps = k // BK
    return (
        k % BK == 0
        and n % config.block_n == 0
        and config.block_m in (16, 32, 64)
        and config.split >= 1
        and config.ku in (1, 2)
        and steps % (config.split * config.ku) == 0
    )


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def w8a8_tma_plan(m: int, n: int, k: int, fp8: bool, device_name: str, capability: tuple[int, int],
                  sms: int) -> W8TmaConfig | None:
    """The launch measured best for this card / shape / M (bench/kernels_w8a8.py --tma-sweep --write-table), else a
    heuristic (token tile the next power of two >= M, weight tile 128, split-K to about one program per SM); None
    off Hopper, above MAX_M, and where the shape does not tile."""
    if capability[0] != 9 or m > MAX_M:
        return None
    table = card_rows(_tuned(), device_name, f"{'fp8' if fp8 else 'int8'}:{n}x{k}") or {}
    fits = sorted(int(key) for key in table if int(key) >= m)
    if fits:
        cfg = W8TmaConfig(**table[str(fits[0])])  # type: ignore[arg-type]
        return cfg if supports_w8a8_tma(n, k, cfg) else None
    bm = max(16, _pow2_at_least(m))
    bn = 128 if n % 128 == 0 else 64
    tiles = -(-n // bn) * -(-m // bm)
    steps = k // BK
    want = max(1, min(steps, -(-sms // tiles)))
    split = next(s for s in range(want, 0, -1) if steps % s == 0)
    cfg = W8TmaConfig(block_n=bn, block_m=bm, split=split, stages=6 if bm <= 32 else 4, num_warps=4 if bm <= 32 else 8)
    return cfg if supports_w8a8_tma(n, k, cfg) else None


def w8a8_tma(
    codes: torch.Tensor,
    sx: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out: torch.Tensor,
    config: W8TmaConfig,
) -> torch.Tensor:
    """out [M, N] = (codes [M, K] @ weight [N, K]^T) * sx [M, 1] * weight_scale [N] (+ bias), codes and weight both
    int8 or both e4m3, contiguous; weight_scale with N or 1 elements."""
    m, k = codes.shape
    n = weight.shape[0]
    if not supports_w8a8_tma(n, k, config):
        raise ValueError(f"w8a8_tma: {n}x{k} does not tile with {config}")
    if m == 0:
        return out
    fp8 = weight.dtype == torch.float8_e4m3fn
    bn, bm = config.block_n, config.block_m
    steps = k // BK
    split = config.split
    grid = (n // bn, split, triton.cdiv(m, bm))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=codes.device) if split > 1 else out
    cnt = _counters(codes.device, grid[0] * grid[2])
    x_desc = TensorDescriptor.from_tensor(codes, [bm, BK])
    w_desc = TensorDescriptor.from_tensor(weight, [bn, BK])
    sw = weight_scale.reshape(-1)
    pdl = pdl_mode(codes.device)
    _w8a8_tma_kernel[grid](
        x_desc, w_desc, sx, sw, bias if bias is not None else sx, out, ws, cnt,
        m, n, steps // split, split,
        FP8=fp8, SW_PER_N=sw.numel() > 1, HAS_BIAS=bias is not None,
        BLOCK_N=bn, BLOCK_M=bm, KU=config.ku, STAGES=config.stages, PDL=pdl, num_warps=config.num_warps,
        launch_pdl=bool(pdl),
    )
    return out
