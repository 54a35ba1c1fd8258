"""The runtime's static KV cache storage formats and the portable reference of attention over them.

The runtime keeps one preallocated cache per layer, [batch, kv_heads, max_seq, head_dim], each batch row's tokens
left-aligned at positions 0 .. seq_lens[b] - 1. Tokens are quantized once, when written, per (token, head):

- "none": K and V stored as they come (the model's dtype, bf16/fp16); no scales.
- "int8": symmetric, s = max|x| / 127 over head_dim, q = clamp(round(x / s), -127, 127) as int8; s float32
  [b, h, S, 1].
- "fp8":  e4m3, s = max|x| / 448, q = fp8(clamp(x / s, -448, 448)); s float32 [b, h, S, 1].
- "int4": asymmetric in groups of KV_INT4_GROUP channels of head_dim (LMDeploy's per-token int4),
  s = max((max x - min x) / 15, max|x| * 2^-16), zp = -8 - round(min x / s), q = clamp(round(x / s) + zp, -8, 7);
  codes packed two per uint8 along head_dim (kv_quant.pack_int4's order), s and zp float16 [b, h, S, D / 32].
  fp16 scales cost 2 bytes each instead of 4: the cache is read once per decoded token, so bytes are time.

x^ = (q - zp) * s. The per-token layout (not KIVI's per-channel keys, which needs chunked residuals) is what a
decode kernel can read at a fixed stride; kv_quant.py holds the per-channel variants used for quality studies.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from accel.quantization.kv_quant import pack_int4, unpack_int4
from accel.quantization.weight_quant import FP8_DTYPE, FP8_MAX

__all__ = [
    "KV_FORMATS",
    "KV_INT4_GROUP",
    "KVFormat",
    "KVTensors",
    "cached_attention",
    "kv_dequantize",
    "kv_quantize",
    "kv_token_bytes",
]

KVFormat = Literal["none", "int8", "fp8", "int4"]
KV_FORMATS: tuple[str, ...] = ("none", "int8", "fp8", "int4")
KV_INT4_GROUP = 32
_RANGE_FLOOR = 2.0**-16


class KVTensors(NamedTuple):
    """Stored K or V: codes, and scale / zero point (None where the format has none)."""

    codes: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None


def _check_format(fmt: str) -> None:
    if fmt not in KV_FORMATS:
        raise ValueError(f"KV cache format must be one of {KV_FORMATS}, got {fmt!r}")


def kv_token_bytes(fmt: str, head_dim: int, dtype: torch.dtype = torch.bfloat16) -> int:
    """Bytes one (token, head) of K or of V takes in the cache: codes plus scales and zero points."""
    _check_format(fmt)
    if fmt == "none":
        return head_dim * dtype.itemsize
    if fmt in ("int8", "fp8"):
        return head_dim + 4
    return head_dim // 2 + 2 * 2 * (head_dim // KV_INT4_GROUP)


def kv_quantize(x: torch.Tensor, fmt: str) -> KVTensors:
    """Quantize K or V [b, h, t, d] into `fmt`'s storage (module docstring); "none" returns x itself."""
    _check_format(fmt)
    if fmt == "none":
        return KVTensors(x, None, None)
    work = x.to(torch.float32)
    if fmt in ("int8", "fp8"):
        qmax = 127.0 if fmt == "int8" else FP8_MAX
        scale = work.abs().amax(dim=-1, keepdim=True) / qmax
        scale = torch.where(scale > 0, scale, torch.finfo(torch.float32).tiny)
        if fmt == "int8":
            codes = torch.round(work / scale).clamp(-127, 127).to(torch.int8)
        else:
            codes = (work / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        return KVTensors(codes, scale, None)
    d = x.shape[-1]
    if d % KV_INT4_GROUP:
        raise ValueError(f"int4 KV needs head_dim divisible by {KV_INT4_GROUP}, got {d}")
    groups = work.unflatten(-1, (d // KV_INT4_GROUP, KV_INT4_GROUP))  # [b, h, t, G, 32]
    lo, hi = groups.amin(dim=-1, keepdim=True), groups.amax(dim=-1, keepdim=True)
    floor = groups.abs().amax(dim=-1, keepdim=True) * _RANGE_FLOOR
    scale = torch.maximum((hi - lo) / 15.0, floor)
    scale = torch.where(scale > 0, scale, 1.0).to(torch.float16).to(torch.float32)  # the stored fp16 grid
    zero = (-8.0 - torch.round(lo / scale)).clamp(-2048, 2048)  # exact in fp16
    codes = (torch.round(groups / scale) + zero).clamp(-8, 7).to(torch.int8).flatten(-2)
    return KVTensors(pack_int4(codes), scale.squeeze(-1).to(torch.float16), zero.squeeze(-1).to(torch.float16))


def kv_dequantize(stored: KVTensors, fmt: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x^ = (q - zp) * s as [b, h, t, d] in `dtype` (computed in float32)."""
    _check_format(fmt)
    codes, scale, zero = stored
    if fmt == "none":
        return codes.to(dtype)
    assert scale is not None
    if fmt in ("int8", "fp8"):
        return (codes.to(torch.float32) * scale.to(torch.float32)).to(dtype)
    assert zero is not None
    q = unpack_int4(codes).to(torch.float32)
    q = q.unflatten(-1, (-1, KV_INT4_GROUP))
    x = (q - zero.to(torch.float32)[..., None]) * scale.to(torch.float32)[..., None]
    return x.flatten(-2).to(dtype)


def cached_attention(
    q: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    seq_lens: torch.Tensor,
    fmt: str,
    sm_scale: float,
) -> torch.Tensor:
    """Causal attention of T new queries over a static cache that already holds them (reference).

    q: [b, hq, T, d]; cache tensors [b, hkv, S, ...] in `fmt`'s storage, hq a multiple of hkv (GQA: query head i
    reads kv head i // (hq / hkv)); seq_lens int32/int64 [b], the tokens row b holds including the T new ones.
    Query t of row b sits at position seq_lens[b] - T + t and attends to positions 0 .. that position.
    Returns [b, hq, T, d] in q's dtype: softmax(q k^T * sm_scale) v, computed in float32.
    T = 1 is decode; T > 1 is speculative verification or a prefill chunk after cached context.
    """
    b, hq, t, _ = q.shape
    hkv, cap = k_codes.shape[1], k_codes.shape[2]
    if hq % hkv:
        raise ValueError(f"query heads {hq} must be a multiple of KV heads {hkv}")
    keys = kv_dequantize(KVTensors(k_codes, k_scale, k_zero), fmt)
    values = kv_dequantize(KVTensors(v_codes, v_scale, v_zero), fmt)
    keys = keys.repeat_interleave(hq // hkv, dim=1)  # [b, hq, S, d]
    values = values.repeat_interleave(hq // hkv, dim=1)
    scores = torch.einsum("bhtd,bhsd->bhts", q.to(torch.float32), keys) * sm_scale
    positions = torch.arange(cap, device=q.device)
    query_pos = seq_lens.to(torch.int64).view(b, 1) - t + torch.arange(t, device=q.device).view(1, t)  # [b, T]
    allowed = positions.view(1, 1, cap) <= query_pos.view(b, t, 1)  # [b, T, S]
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("bhts,bhsd->bhtd", probs, values).to(q.dtype)
