"""RoPE and the KV cache write folded into the q/k/v W4A16 decode GEMV (op w4a16_linear_rope_kv; the contract and
the reference are accel.runtime.qkv_fold_ops').

A decode step ran the q | k | v linear, then rope_kv_write.py (q and k rotated, k and v stored into the cache): two
launches a layer. Where w4a16_linear would run the TMA decode GEMV for these rows (norm_fold.fold_plan: a split-1
launch) and the cache keeps 16-bit K/V in x's dtype (format "none"), the rotation and the stores are that GEMV's
epilogue (w4a16_gemv_tma's RopeKV): each program takes block_n / 2 rows of one head's first half and the rows D / 2
below them, which are the pairs the rotation mixes, rounds both to x's dtype as the linear's output is rounded, and
rotates them with rope.py's arithmetic (q and k heads) or passes them through (v heads); q goes to a new [B, T, H, D]
tensor, k and v into the cache at each token's position (a position outside [0, S) is skipped, as kv_write.py skips
it). A quantized cache needs each head's absolute maximum before any store (a program would have to own whole heads:
too few programs to stream the weights), so int8 / int4 / fp8 caches, verification steps (T > 1) and every other case
run the linear (with the folded norm's scale where ss is given) and then rope_kv_write.py: the same results, the
launch not saved.
"""

from __future__ import annotations

import torch

from accel.runtime.norm_fold_ops import check_linear_rms
from accel_cuda.kernels import norm_fold, rope_kv_write
from accel_cuda.kernels import w4a16_gemv_tma as gemv_tma
from accel_cuda.kernels.w4a16 import w4a16_linear

__all__ = ["accepts", "w4a16_linear_rope_kv"]

OP = "w4a16_linear_rope_kv"


def accepts(
    rows: int,
    dtype: torch.dtype,
    device: torch.device,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    *,
    permuted: bool = False,
    kv_format: str = "none",
    head_dim: int = 0,
    num_heads: int = 0,
) -> bool:
    """KernelChoice.accepts for w4a16_linear_rope_kv: the TMA GEMV runs the fold for `rows` tokens into a cache of
    `kv_format` (16-bit only) with these heads (a split-1 launch whose half tiles divide head_dim / 2)."""
    if kv_format != "none" or head_dim <= 0 or num_heads <= 0:
        return False
    config = norm_fold.fold_launch(rows, dtype, device, weight_packed, weight_scale, weight_zero_point, group_size,
                                   permuted)
    n = weight_packed.shape[0]
    kv_heads = (n // head_dim - num_heads) // 2
    return config is not None and gemv_tma.rope_tiles(n, head_dim, num_heads, kv_heads, config)


def _rope_operands(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    v_codes: torch.Tensor,
    fmt: str,
    num_heads: int,
) -> gemv_tma.RopeKV | None:
    """The epilogue's operands where the kernel takes this layout (module docstring), else None."""
    if fmt != "none" or x.ndim != 3 or cos.ndim != 3 or positions.ndim != 2:
        return None
    b, t, _ = x.shape
    # decode steps only: a verification step (T > 1) runs the fallback, since the epilogue's T > 1 indexing has not
    # run on a GPU
    if t != 1:
        return None
    d = cos.shape[-1]
    tables_ok = (
        cos.dtype == sin.dtype == x.dtype
        and cos.shape == sin.shape
        and cos.stride() == sin.stride()
        and cos.shape[0] in (1, b)
        and cos.shape[1] == t
        and cos.stride(-1) == 1
    )
    stores_ok = all(
        store.dtype == x.dtype and store.ndim == 4 and store.shape[0] >= b and store.shape[-1] == d
        and store.stride(-1) == 1
        for store in (k_codes, v_codes)
    )
    if not tables_ok or not stores_ok or tuple(positions.shape) != (b, t) or positions.dtype.is_floating_point:
        return None
    q_out = torch.empty((b, t, num_heads, d), dtype=x.dtype, device=x.device)
    return gemv_tma.RopeKV(cos, sin, positions, q_out, k_codes, v_codes, num_heads)


def w4a16_linear_rope_kv(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor | None,
    eps: float,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
    num_heads: int,
    *,
    permuted: bool = False,
) -> torch.Tensor:
    """q rotated [B, T, H, D]; k rotated and v stored at `positions` of the cache stores (qkv_fold_ops' contract), in
    the GEMV's epilogue where the module docstring says, else the linear then rope_kv_write.py; `permuted` as
    w4a16_linear's."""
    from accel.runtime.qkv_fold_ops import check_linear_rope_kv

    check_linear_rope_kv(x, weight_packed, cos, k_codes, num_heads)
    if ss is not None:
        check_linear_rms(x, ss, eps)
    config = norm_fold.fold_plan(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted)
    rope = _rope_operands(x, cos, sin, positions, k_codes, v_codes, fmt, num_heads)
    if (config is not None and rope is not None and rope.tiles(weight_packed.shape[0], config)
            and (ss is None or ss.is_contiguous())):
        rms = None if ss is None else (ss, eps)
        return gemv_tma.w4a16_tma_gemv(x, weight_packed, weight_scale, None, config=config, rms=rms, rope=rope)
    if ss is None:
        y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted=permuted)
    else:
        y = norm_fold.w4a16_linear_rms(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps,
                                       permuted=permuted)
    b, t, _ = x.shape
    d = cos.shape[-1]
    kv_heads = k_codes.shape[1]
    q, k, v = y.split([num_heads * d, kv_heads * d, kv_heads * d], dim=-1)
    return rope_kv_write.rotary_kv_cache_write(
        q.view(b, t, num_heads, d), k.view(b, t, kv_heads, d), v.view(b, t, kv_heads, d), cos, sin, positions,
        k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt,
    )
