"""W4A16 decode GEMV with TMA-pipelined loads (Hopper, sm_90): the permuted words and the scales of each K step
arrive through tensor descriptors into shared memory STAGES steps ahead (Triton's software pipeliner owns the
buffers and mbarriers; the activations follow by cp.async), so many bytes are in flight per SM without holding
them in registers. The register-prefetch GEMV (w4a16_gemv.py) waits on every step's loads: 2.4x its byte floor.

Same words and per-word arithmetic as w4a16_gemv.py (_DOT_WORD): each step's words arrive as a 2-D box [BLOCK_N,
16 NG] of [N, K/8] (rows of NG x 64 contiguous bytes) and are viewed as [BLOCK_N, NG, 16] in registers; group scales
(and 8 + zero point in the scales' dtype, when a caller prepares it) through a 2-D descriptor [N, K/128], so NG * 2
bytes must reach TMA's 16-byte minimum: NG >= 8. Measured versions: accel-cuda/KERNEL_NOTES.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from accel_cuda.kernels.tuning import tuned_table
from accel_cuda.kernels.w4a16_gemv import _DOT_WORD, _MAGIC, launch_geometry, write_rows

__all__ = ["TmaGemvConfig", "supports_tma", "tma_plan", "w4a16_tma_gemv"]


@triton.jit(do_not_specialize=["M", "G", "STEPS", "SPLIT"])
def _gemv_tma_kernel(
    x_ptr, w_desc, s_desc, z_desc, out_ptr, ws_ptr, cnt_ptr,
    M, N, KW, G, STEPS, SPLIT,
    HAS_ZP: tl.constexpr, BLOCK_N: tl.constexpr, NG: tl.constexpr, SPLIT_P2: tl.constexpr, ASM: tl.constexpr,
    MAGIC: tl.constexpr, STAGES: tl.constexpr,
):
    pid_s = tl.program_id(1)
    pid_m = tl.program_id(2)
    row0 = tl.program_id(0) * BLOCK_N
    rows = row0 + tl.arange(0, BLOCK_N)
    x_row = x_ptr + pid_m * 2 * KW
    g_first = pid_s * STEPS * NG
    gi = tl.arange(0, NG)
    wi = tl.arange(0, 16)
    acc = tl.zeros((BLOCK_N, NG, 16), dtype=tl.float32)
    for i in tl.range(STEPS, num_stages=STAGES):
        g0 = g_first + i * NG
        words = w_desc.load([row0, g0 * 16]).reshape(BLOCK_N, NG, 16)
        s = s_desc.load([row0, g0]).to(tl.float32)
        zf = z_desc.load([row0, g0]).to(tl.float32) if HAS_ZP else tl.full((BLOCK_N, NG), 8.0, tl.float32)  # 8 + zp
        xw = x_row + ((g0 + gi)[:, None] * 16 + wi[None, :]) * 2  # word kw's activation pairs: x64[2 kw], [2 kw + 1]
        xa = tl.load(xw)[None, :, :]
        xb = tl.load(xw + 1)[None, :, :]
        zb = tl.broadcast_to((zf + MAGIC)[:, :, None], (BLOCK_N, NG, 16))
        part = tl.inline_asm_elementwise(ASM, "=f,r,f,l,l", [words, zb, xa, xb], dtype=tl.float32, is_pure=True,
                                         pack=1)
        acc += part * s[:, :, None]
    write_rows(tl.sum(tl.sum(acc, axis=2), axis=1), out_ptr, ws_ptr, cnt_ptr, rows, rows < N, M, N, SPLIT,
               SPLIT_P2)


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
    entry = _tuned().get(device_name, {}).get(f"{n}x{k}g128", {}).get(str(m))
    if entry is None:
        return None
    config = TmaGemvConfig(**entry)  # type: ignore[arg-type]
    return config if supports_tma(n, k, config) else None


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
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T for group size 128 from permute_nibbles' words [N, K/8], scales [N, K/128] and,
    when asymmetric, 8 + zero point in the scales' dtype (None: symmetric); x [..., K] fp16/bf16."""
    k = x.shape[-1]
    n = weight_packed.shape[0]
    if not supports_tma(n, k, config):
        raise ValueError(f"w4a16_tma_gemv: shape {n}x{k} does not tile with {config}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    result = torch.empty((*lead, n), dtype=x.dtype, device=x.device) if out is None else out
    if m == 0:
        return result
    kw, groups = k // 8, k // 128
    bn, ng = config.block_n, config.ng
    steps, split, grid, _, ws, cnt = launch_geometry(kw, ng * 16, config.split, bn, m, n, result)
    w_desc = TensorDescriptor.from_tensor(weight_packed, [bn, ng * 16])
    s_desc = TensorDescriptor.from_tensor(weight_scale, [bn, ng])
    z_desc = TensorDescriptor.from_tensor(zero_plus8, [bn, ng]) if zero_plus8 is not None else s_desc
    dt = {torch.bfloat16: "bf16", torch.float16: "fp16"}[x.dtype]
    _gemv_tma_kernel[grid](
        x2.view(torch.int64), w_desc, s_desc, z_desc, result, ws, cnt, m, n, kw, groups, steps, split,
        HAS_ZP=zero_plus8 is not None, BLOCK_N=bn, NG=ng, SPLIT_P2=1 << max(0, (split - 1).bit_length()),
        ASM=_DOT_WORD[dt], MAGIC=_MAGIC[dt], STAGES=config.stages,
        num_warps=config.num_warps,
    )
    return result
