"""2:4-sparse x int4 decode GEMV with TMA-pipelined loads (Hopper, sm_90), on row-interleaved words so that one
thread's words share their activations.

The words and positions of sparse24_layout, interleaved by 4 rows at load (interleave_rows: element [r, c] goes to
[r // 4, 4 c + r % 4]), and the group scales arrive through tensor descriptors into shared memory STAGES steps ahead
(Triton's software pipeliner owns the buffers and mbarriers; the activations follow by cp.async). A thread's
contiguous words are then the same word column of 4 rows, which read the same 16 activations: a quarter of the
activation traffic of the row-major tile (w4a16_sparse24_gemv.py), whose shared-memory reads of x bank-conflicted
when pipelined. Per word the arithmetic is _DOT_SPARSE's. Launched with programmatic dependent launch on Hopper
(pdl.py), as w4a16_gemv_tma.py.
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
from accel_cuda.kernels.sparse24_layout import ROWS, interleave_rows
from accel_cuda.kernels.tuning import card_rows, tuned_table
from accel_cuda.kernels.w4a16_gemv import _MAGIC, launch_geometry, write_rows
from accel_cuda.kernels.w4a16_sparse24_gemv import _DOT_SPARSE

__all__ = ["ROWS", "TmaSparseConfig", "interleave_rows", "supports_tma", "tma_sparse_plan", "w4a16_sparse24_tma_gemv"]


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT"])
def _sparse_tma_kernel(
    x_ptr, w_desc, m_desc, s_desc, z_desc, out_ptr, ws_ptr, cnt_ptr,
    M, N, KV, G, STEPS, SPLIT,
    HAS_ZP: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_P2: tl.constexpr, ASM: tl.constexpr,
    MAGIC: tl.constexpr, STAGES: tl.constexpr, PDL: tl.constexpr,
):
    R: tl.constexpr = 4
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    row0 = tl.program_id(0) * BLOCK_N
    x_row = x_ptr + pid_m * 4 * KV
    b_first = pid_s * STEPS * NG
    pdl_enter(PDL)
    gi = tl.arange(0, NG)
    wi = tl.arange(0, 8)
    acc = tl.zeros((BLOCK_N // R, NG, 8, R), dtype=tl.float32)
    for i in tl.range(STEPS, num_stages=STAGES):
        b0 = b_first + i * NG
        words = w_desc.load([row0 // R, b0 * 8 * R]).reshape(BLOCK_N // R, NG, 8, R)
        meta = m_desc.load([row0 // R, b0 * 8 * R]).reshape(BLOCK_N // R, NG, 8, R).to(tl.int32)
        # [BLOCK_N, NG] -> [BLOCK_N / 4, NG, 1, 4]: row 4 r + q's scale at [r, g, 0, q]
        s = tl.permute(s_desc.load([row0, b0]).to(tl.float32).reshape(BLOCK_N // R, R, NG), (0, 2, 1))[:, :, None, :]
        if HAS_ZP:  # 8 + zero point
            zf = tl.permute(z_desc.load([row0, b0]).to(tl.float32).reshape(BLOCK_N // R, R, NG), (0, 2, 1))
        else:
            zf = tl.full((BLOCK_N // R, NG, R), 8.0, tl.float32)
        xg = x_row + (b0 + gi)[:, None] * 32 + wi[None, :]  # word (b, w)'s slot j activations: x[32 b + 8 j + w]
        x0 = tl.load(xg)[None, :, :, None]
        x1 = tl.load(xg + 8)[None, :, :, None]
        x2 = tl.load(xg + 16)[None, :, :, None]
        x3 = tl.load(xg + 24)[None, :, :, None]
        zb = tl.broadcast_to((zf + MAGIC)[:, :, None, :], (BLOCK_N // R, NG, 8, R))
        part = tl.inline_asm_elementwise(ASM, "=f,r,r,f,l,l,l,l", [words, meta, zb, x0, x1, x2, x3],
                                         dtype=tl.float32, is_pure=True, pack=1)
        acc += part * s
    pdl_release(PDL)
    y = tl.reshape(tl.sum(tl.sum(acc, axis=2), axis=1), (BLOCK_N,))  # [r, q] -> row 4 r + q
    rows = row0 + tl.arange(0, BLOCK_N)
    write_rows(y, out_ptr, ws_ptr, cnt_ptr, rows, rows < N, M, N, SPLIT, SPLIT_P2)


@dataclass(frozen=True)
class TmaSparseConfig:
    """One launch: rows per program (a multiple of 16), groups of 128 inputs per K step (8: TMA's 16-byte scale
    rows, and at most 256 interleaved words per box row), split-K, pipeline stages, warps."""

    block_n: int = 16
    ng: int = 8
    split: int = 1
    stages: int = 3
    num_warps: int = 4


TUNED_CONFIGS = Path(__file__).with_name("w4a16_sparse24_tma_configs.json")

# Without a tuned entry the TMA GEMV serves M up to this with its default launch; larger M is prefill.
GEMV_MAX_M = 2


_tuned = functools.partial(tuned_table, TUNED_CONFIGS)


def tma_sparse_plan(m: int, n: int, k: int, device_name: str) -> TmaSparseConfig | None:
    """The measured launch for this card / shape / M (bench/kernels_tma.py --write-table), else the default launch
    for M <= GEMV_MAX_M; None for larger M or where the launch does not tile."""
    entry = (card_rows(_tuned(), device_name, f"{n}x{k}g128") or {}).get(str(m))
    if entry is None and m > GEMV_MAX_M:
        return None
    config = TmaSparseConfig(**entry) if entry is not None else TmaSparseConfig()  # type: ignore[arg-type]
    return config if supports_tma(n, k, config) else None


def supports_tma(n: int, k: int, config: TmaSparseConfig) -> bool:
    """Full tiles only (no masks in this kernel) and Hopper's TMA limits."""
    groups = k // 128
    return (k % 128 == 0 and config.ng == 8 and config.block_n % (4 * ROWS) == 0 and n % config.block_n == 0
            and groups % config.ng == 0 and (groups // config.ng) % max(1, config.split) == 0)


def w4a16_sparse24_tma_gemv(
    x: torch.Tensor,
    values: torch.Tensor,
    positions: torch.Tensor,
    weight_scale: torch.Tensor,
    zero_plus8: torch.Tensor | None,
    *,
    config: TmaSparseConfig,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T from prepare_sparse24's (values, positions) after interleave_rows ([N / 4, K / 4] each),
    bf16/fp16 scales [N, K/128] and, when asymmetric, 8 + zero point in the scales' dtype (None: symmetric)."""
    k = x.shape[-1]
    n = values.shape[0] * ROWS
    if not supports_tma(n, k, config) or values.shape[1] != k // 16 * ROWS or positions.shape != values.shape:
        raise ValueError(f"w4a16_sparse24_tma_gemv: {tuple(values.shape)} words for K={k} do not tile with {config}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    kv, groups = k // 16, k // 128
    bn, ng = config.block_n, config.ng
    steps, split, grid, _, ws, cnt = launch_geometry(kv, ng * 8, config.split, bn, m, n, result)
    w_desc = TensorDescriptor.from_tensor(values, [bn // ROWS, ng * 8 * ROWS])
    m_desc = TensorDescriptor.from_tensor(positions, [bn // ROWS, ng * 8 * ROWS])
    s_desc = TensorDescriptor.from_tensor(weight_scale, [bn, ng])
    z_desc = TensorDescriptor.from_tensor(zero_plus8, [bn, ng]) if zero_plus8 is not None else s_desc
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    pdl = pdl_mode(x.device)
    _sparse_tma_kernel[grid](
        x2.view(torch.int64), w_desc, m_desc, s_desc, z_desc, result, ws, cnt, m, n, kv, groups, steps, split,
        HAS_ZP=zero_plus8 is not None, BLOCK_N=bn, NG=ng, SPLIT_P2=1 << max(0, (split - 1).bit_length()),
        ASM=_DOT_SPARSE[dt], MAGIC=_MAGIC[dt], STAGES=config.stages, PDL=pdl, num_warps=config.num_warps,
        launch_pdl=bool(pdl),
    )
    return result
