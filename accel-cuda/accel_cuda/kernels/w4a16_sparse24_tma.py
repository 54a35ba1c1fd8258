"""2:4-sparse x int4 decode GEMV with TMA-pipelined loads (Hopper, sm_90): the position words, value words and
scales of each K step arrive through tensor descriptors into shared memory STAGES steps ahead (Triton's software
pipeliner owns the buffers and mbarriers; the activations follow by cp.async), so many bytes are in flight per SM
without holding them in registers. The register-prefetch kernel (w4a16_sparse24_gemv.py) stalls on every step's
loads: 2.6-3x its byte floor (accel-cuda/KERNEL_NOTES.md).

Same layout and per-word arithmetic as w4a16_sparse24_gemv.py (_DOT_SPARSE): tiles [BLOCK_N, NG, 8] read through
3-D views [N, K/128, 8] of the words and positions; block b's scale (and 8 + zero point, bf16, made at prepare)
through a 2-D descriptor [N, K/128], so NG * 2 bytes must reach TMA's 16-byte minimum: NG >= 8.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from accel_cuda.kernels.w4a16_gemv import _MAGIC, launch_geometry, write_rows
from accel_cuda.kernels.w4a16_sparse24_gemv import _DOT_SPARSE

__all__ = ["TmaSparseConfig", "supports_tma", "w4a16_sparse24_tma_gemv"]


_LDG = tl.constexpr("ld.global.nc.b64 $0, [$1];")


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT"])
def _sparse_tma_kernel(
    x_ptr, w_desc, m_desc, s_desc, z_desc, out_ptr, ws_ptr, cnt_ptr,
    M, N, KV, G, STEPS, SPLIT,
    HAS_ZP: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_P2: tl.constexpr, ASM: tl.constexpr,
    MAGIC: tl.constexpr, STAGES: tl.constexpr, X_DIRECT: tl.constexpr,
):
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    row0 = tl.program_id(0) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    x_row = x_ptr + pid_m * 4 * KV
    b_first = pid_s * STEPS * NG
    gi = tl.arange(0, NG)
    wi = tl.arange(0, 8)
    acc = tl.zeros((BLOCK_N, NG, 8), dtype=tl.float32)
    for i in tl.range(STEPS, num_stages=STAGES):
        b0 = b_first + i * NG
        words = w_desc.load([row0, b0 * 8]).reshape(BLOCK_N, NG, 8)
        meta = m_desc.load([row0, b0 * 8]).reshape(BLOCK_N, NG, 8).to(tl.int32)
        s = s_desc.load([row0, b0]).to(tl.float32)
        # 8 + zero point
        zf = z_desc.load([row0, b0]).to(tl.float32) if HAS_ZP else tl.full((BLOCK_N, NG), 8.0, tl.float32)
        xg = x_row + (b0 + gi)[:, None] * 32 + wi[None, :]  # word (b, w)'s slot j activations: x[32 b + 8 j + w]
        if X_DIRECT:  # plain L1-cached loads, kept out of the pipeline (its shared-memory copy of x bank-conflicts)
            xa = xg.to(tl.int64, bitcast=True)
            x0 = tl.inline_asm_elementwise(_LDG, "=l,l", [xa], dtype=tl.int64, is_pure=True, pack=1)[None, :, :]
            x1 = tl.inline_asm_elementwise(_LDG, "=l,l", [xa + 64], dtype=tl.int64, is_pure=True, pack=1)[None, :, :]
            x2 = tl.inline_asm_elementwise(_LDG, "=l,l", [xa + 128], dtype=tl.int64, is_pure=True, pack=1)[None, :, :]
            x3 = tl.inline_asm_elementwise(_LDG, "=l,l", [xa + 192], dtype=tl.int64, is_pure=True, pack=1)[None, :, :]
        else:
            x0 = tl.load(xg)[None, :, :]
            x1 = tl.load(xg + 8)[None, :, :]
            x2 = tl.load(xg + 16)[None, :, :]
            x3 = tl.load(xg + 24)[None, :, :]
        zb = tl.broadcast_to((zf + MAGIC)[:, :, None], (BLOCK_N, NG, 8))
        part = tl.inline_asm_elementwise(ASM, "=f,r,r,f,l,l,l,l", [words, meta, zb, x0, x1, x2, x3],
                                         dtype=tl.float32, is_pure=True, pack=1)
        acc += part * s[:, :, None]
    write_rows(tl.sum(tl.sum(acc, axis=2), axis=1), out_ptr, ws_ptr, cnt_ptr, rows, rows < N, M, N, SPLIT,
               SPLIT_P2)


@dataclass(frozen=True)
class TmaSparseConfig:
    """One launch: rows per program, groups of 128 inputs per K step (>= 8), split-K, pipeline stages, warps."""

    block_n: int = 16
    ng: int = 8
    split: int = 1
    stages: int = 3
    num_warps: int = 4
    x_direct: bool = False


def supports_tma(n: int, k: int, config: TmaSparseConfig) -> bool:
    """Full tiles only (no masks in this kernel), Hopper's TMA alignment (scale rows of 8 groups' bytes)."""
    groups = k // 128
    return (k % 128 == 0 and config.ng >= 8 and n % config.block_n == 0 and groups % config.ng == 0
            and groups % 8 == 0 and (groups // config.ng) % max(1, config.split) == 0)


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
    """y = x @ W^T from prepare_sparse24's (values, positions) [N, K/16], bf16/fp16 scales [N, K/128] and, when
    asymmetric, 8 + zero point in the scales' dtype (None: symmetric)."""
    k = x.shape[-1]
    n = values.shape[0]
    if not supports_tma(n, k, config):
        raise ValueError(f"w4a16_sparse24_tma_gemv: shape {n}x{k} does not tile with {config}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    kv, groups = k // 16, k // 128
    bn, ng = config.block_n, config.ng
    steps, split, grid, _, ws, cnt = launch_geometry(kv, ng * 8, config.split, bn, m, n, result)
    w_desc = TensorDescriptor.from_tensor(values, [bn, ng * 8])
    m_desc = TensorDescriptor.from_tensor(positions, [bn, ng * 8])
    s_desc = TensorDescriptor.from_tensor(weight_scale, [bn, ng])
    z_desc = TensorDescriptor.from_tensor(zero_plus8, [bn, ng]) if zero_plus8 is not None else s_desc
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    _sparse_tma_kernel[grid](
        x2.view(torch.int64), w_desc, m_desc, s_desc, z_desc, result, ws, cnt, m, n, kv, groups, steps, split,
        HAS_ZP=zero_plus8 is not None, BLOCK_N=bn, NG=ng, SPLIT_P2=1 << max(0, (split - 1).bit_length()),
        ASM=_DOT_SPARSE[dt], MAGIC=_MAGIC[dt], STAGES=config.stages, X_DIRECT=config.x_direct,
        num_warps=config.num_warps,
    )
    return result
