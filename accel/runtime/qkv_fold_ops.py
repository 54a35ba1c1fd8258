"""RoPE and the KV cache write folded into the fused q/k/v W4A16 projection of a decode step: the portable reference
of `w4a16_linear_rope_kv`.

    w4a16_linear_rope_kv(x, W.., ss, eps, cos, sin, positions, *stores, fmt, H) = q_rot, where
        y = x @ W^T                             (w4a16_linear; given ss: w4a16_linear_rms, the RMSNorm folded in)
        q, k, v = y.split([H D, Hkv D, Hkv D])  viewed [B, T, H, D], [B, T, Hkv, D], [B, T, Hkv, D]
        q_rot = rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt)      (rope_kv_ops)

with x [B, T, K], W [N, K] stacked as q | k | v rows, N = (H + 2 Hkv) D, D = head_dim (cos.shape[-1]) and Hkv =
(N / D - H) / 2 read off the weight. y is rounded to x's dtype before RoPE, as the unfused pair reads it. q_rot [B, T,
H, D] is returned (new, contiguous); rotated k and v are never returned, only quantized into `fmt` and stored at
positions[b, t] of the stores (rows 0 .. B - 1, in place).

A decode step runs the qkv projection and then rotary_kv_cache_write once per layer: two launches, and y goes out to
memory and back in between. Every element of q_rot and of the stored k and v needs only its own head's slice of y
(x_i and x_{i +- D/2} for rotate_half), so a backend whose GEMV tiles cover whole heads rotates and stores in the
epilogue, and y never leaves the chip (op "w4a16_linear_rope_kv", declared in ops.OPS). The reference is literally
the unfused references composed, so through the op a model computes the bits it computed unfused, on any device.
"""

from __future__ import annotations

import torch

from accel.runtime.norm_fold_ops import w4a16_linear_rms
from accel.runtime.rope_kv_ops import rotary_kv_cache_write

__all__ = ["check_linear_rope_kv", "w4a16_linear_rope_kv"]


def check_linear_rope_kv(
    x: torch.Tensor, weight_packed: torch.Tensor, cos: torch.Tensor, k_codes: torch.Tensor, num_heads: int
) -> None:
    """A ValueError naming the argument when x, the stacked weight's rows N, the head_dim D of the tables and the head
    counts do not fit one q | k | v projection: x [B, T, K]; N = (num_heads + 2 Hkv) D with Hkv >= 1 and Hkv the
    stores' head count. From metadata alone (no host sync); the rest is the linear's and rotary_kv_cache_write's to
    check."""
    op = "w4a16_linear_rope_kv"
    if x.ndim != 3:
        raise ValueError(f"{op}: x must be [B, T, K] (the step's hidden states), got {tuple(x.shape)}")
    if cos.ndim != 3 or cos.shape[-1] < 1:
        raise ValueError(f"{op}: cos must be [B or 1, T, D] (its D is the head_dim), got {tuple(cos.shape)}")
    n, d = weight_packed.shape[0], cos.shape[-1]
    if n % d:
        raise ValueError(
            f"{op}: weight_packed's {n} rows must be a multiple of head_dim D = {d} (cos.shape[-1]): the q | k | v "
            f"projection's (num_heads + 2 Hkv) heads of D rows each"
        )
    if not isinstance(num_heads, int) or num_heads < 1 or n // d - num_heads < 2 or (n // d - num_heads) % 2:
        raise ValueError(
            f"{op}: num_heads = {num_heads!r} does not fit weight_packed's {n // d} heads of D = {d} rows: "
            f"{n // d} - num_heads must be 2 Hkv, a positive even number (the k and v heads)"
        )
    hkv = (n // d - num_heads) // 2
    if k_codes.ndim != 4 or k_codes.shape[1] != hkv:
        raise ValueError(
            f"{op}: k_codes {tuple(k_codes.shape)} must be [B', Hkv, S, c] with Hkv = {hkv}, the KV heads of "
            f"weight_packed ({n // d} heads of D = {d} rows, {num_heads} of them q heads)"
        )


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
) -> torch.Tensor:
    """q rotated (new, contiguous [B, T, num_heads, D] in x's dtype) of y = x @ W^T (given ss, w4a16_linear_rms's y:
    the norm folded in); k rotated and v of y quantized into `fmt` and stored at positions[b, t] of the stores, in
    place (reference; the module docstring).

    w4a16_linear (or w4a16_linear_rms) then rotary_kv_cache_write on y's q / k / v views, exactly: their contracts
    hold (positions each in [0, S) and distinct within a row, not checked; stores as kv_quantize makes them)."""
    from accel.runtime.ops import w4a16_linear  # ops declares this op, so import its linear lazily

    check_linear_rope_kv(x, weight_packed, cos, k_codes, num_heads)
    b, t, _ = x.shape
    d = cos.shape[-1]
    hkv = (weight_packed.shape[0] // d - num_heads) // 2
    if ss is None:
        y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size)
    else:
        y = w4a16_linear_rms(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps)
    q, k, v = y.split((num_heads * d, hkv * d, hkv * d), dim=-1)  # [B, T, H D], [B, T, Hkv D] x 2
    q, k, v = q.view(b, t, num_heads, d), k.view(b, t, hkv, d), v.view(b, t, hkv, d)
    return rotary_kv_cache_write(q, k, v, cos, sin, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)
