"""RoPE fused with the KV cache write as one kernel op: the portable reference of `rotary_kv_cache_write`.

    rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt) = q_rot, where
        q_rot, k_rot = rotary_embedding(q, k, cos, sin)                        (rope_ops: x cos + rotate_half(x) sin)
        kv_cache_write(k_rot^T, v^T, positions, *stores, fmt)                  (kv_ops: quantize, store at positions)

with ^T the [B, T, Hkv, D] -> [B, Hkv, T, D] view. q [B, T, H, D], k and v [B, T, Hkv, D] are usually views into the
fused qkv projection's output; cos / sin [B or 1, T, D]; positions [B, T]; the stores [B' >= B, Hkv, S, c] in one of
kv_ops' formats (none / int8 / fp8 / int4). q_rot is returned (new, contiguous); rotated k is never returned, only
stored, with v, at positions[b, t] of rows 0 .. B - 1, in place.

A decode step runs RoPE and then the cache write once per layer: two launches where a backend needs one (op
"rotary_kv_cache_write", declared in ops.OPS; ~2 us a layer on an H200 at batch 1). The reference is literally the two
references composed, so through the op a model computes the bits it computed unfused, on any device.
"""

from __future__ import annotations

import torch

from accel.runtime.kv_ops import check_kv_cache_write, kv_cache_write
from accel.runtime.rope_ops import check_rotary_embedding, rotary_embedding

__all__ = ["check_rotary_kv_cache_write", "rotary_kv_cache_write"]


def check_rotary_kv_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
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
) -> None:
    """The arguments checked against rotary_kv_cache_write's contract, from metadata alone (no host sync): a
    ValueError naming the argument (the two composed ops' checks, prefixed with this op's name)."""
    try:
        check_rotary_embedding(q, k, cos, sin)
        if v.shape != k.shape or not v.is_floating_point():
            raise ValueError(
                f"v must be floating and shaped like k [B, T, Hkv, D] = {list(k.shape)}, got {v.dtype} {list(v.shape)}"
            )
        stores = (k_codes, k_scale, k_zero, v_codes, v_scale, v_zero)
        check_kv_cache_write(k.transpose(1, 2), v.transpose(1, 2), positions, *stores, fmt)
    except ValueError as error:
        raise ValueError(f"rotary_kv_cache_write: {error}") from None


def rotary_kv_cache_write(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
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
) -> torch.Tensor:
    """q rotated (new, contiguous [B, T, H, D] in q's dtype); k rotated and v quantized into `fmt` and stored at
    positions[b, t] of the stores, in place (reference; the module docstring).

    rope_ops.rotary_embedding then kv_ops.kv_cache_write on the [B, Hkv, T, D] views, exactly: their contracts hold
    (positions each in [0, S) and distinct within a row, not checked; stores as kv_quantize makes them)."""
    check_rotary_kv_cache_write(q, k, v, cos, sin, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)
    q_rot, k_rot = rotary_embedding(q, k, cos, sin)
    kv_cache_write(
        k_rot.transpose(1, 2), v.transpose(1, 2), positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt
    )
    return q_rot
