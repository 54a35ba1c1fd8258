"""Rotary position embedding (RoPE) as a kernel op: the portable reference of `rotary_embedding`.

    rotary_embedding(q, k, cos, sin) = (q * cos + rotate_half(q) * sin,  k * cos + rotate_half(k) * sin)
    rotate_half(x) = cat(-x[..., D/2:], x[..., :D/2])

i.e. each pair (x_i, x_{i+D/2}) rotated by the angle whose cos / sin the tables hold at i (and i + D/2), computed as
torch evaluates that expression in x's dtype: each product rounded to the dtype, then their sum rounded. q [B, T, H, D]
and k [B, T, Hkv, D] are usually views into the fused qkv projection's output; cos / sin [B or 1, T, D] broadcast
over the heads. In eager torch that is ~10 kernels a layer (neg, cat, 2 mul, add for each of q and k): launch-bound at
decode, so a backend rotates q and k in one launch (op "rotary_embedding", declared in ops.OPS).
"""

from __future__ import annotations

import torch

__all__ = ["check_rotary_embedding", "rotary_embedding", "rotate_half"]


def check_rotary_embedding(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """A ValueError naming what is wrong when the arguments do not fit rotary_embedding's contract."""
    if q.ndim != 4 or not q.is_floating_point():
        raise ValueError(f"rotary_embedding: q must be a floating-point [B, T, H, D], got {q.dtype} {tuple(q.shape)}")
    b, t, _, d = q.shape
    if d % 2:
        raise ValueError(f"rotary_embedding: head_dim D must be even (two halves rotate as pairs), got q's D = {d}")
    if k.ndim != 4 or k.dtype != q.dtype or (k.shape[0], k.shape[1], k.shape[3]) != (b, t, d):
        raise ValueError(
            f"rotary_embedding: k {k.dtype} {tuple(k.shape)} must be [B, T, Hkv, D] = [{b}, {t}, Hkv, {d}] in q's "
            f"dtype {q.dtype}"
        )
    for name, table in (("cos", cos), ("sin", sin)):
        if table.ndim != 3 or table.dtype != q.dtype or tuple(table.shape) not in ((1, t, d), (b, t, d)):
            raise ValueError(
                f"rotary_embedding: {name} {table.dtype} {tuple(table.shape)} must be [B or 1, T, D] = [{b} or 1, {t}, "
                f"{d}] in q's dtype {q.dtype}"
            )


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the two halves of the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_rot, k_rot): x * cos + rotate_half(x) * sin for x = q [B, T, H, D] and k [B, T, Hkv, D] (any strides), cos
    and sin [B or 1, T, D] broadcast over the heads; new contiguous tensors in q's dtype (module docstring).

    The runtime's inline expression, element for element (it ran on [B, H, T, D]-transposed views: the same products
    and sums), so on the CPU a model computes the same bits through the op as it did inline."""
    check_rotary_embedding(q, k, cos, sin)
    cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)  # [B|1, T, 1, D]: one rotation for every head
    q_rot = q * cos + rotate_half(q) * sin
    k_rot = k * cos + rotate_half(k) * sin
    return q_rot.contiguous(), k_rot.contiguous()
