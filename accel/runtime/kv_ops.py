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

Two ops work on a cache in these formats (declared in ops.OPS, each with a backend kernel where one exists):
`kv_cache_write` quantizes new K and V tokens and stores them at their positions, in place; `cached_attention`
reads them back.
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
    "check_kv_cache_write",
    "kv_cache_write",
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


def _store_layout(fmt: str, head_dim: int) -> tuple[tuple[str, int] | None, ...]:
    """(dtype kind, last dimension) of codes, scale and zero point in `fmt` for head_dim channels; None where the
    format stores no such tensor. Codes of "none" take any floating dtype (the model's)."""
    if fmt == "none":
        return (("float", head_dim), None, None)
    if fmt in ("int8", "fp8"):
        return (("int8" if fmt == "int8" else "fp8", head_dim), ("float32", 1), None)
    return (("uint8", head_dim // 2), ("float16", head_dim // KV_INT4_GROUP), ("float16", head_dim // KV_INT4_GROUP))


_STORE_DTYPES = {
    "int8": torch.int8,
    "fp8": FP8_DTYPE,
    "uint8": torch.uint8,
    "float32": torch.float32,
    "float16": torch.float16,
}


def check_kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
) -> None:
    """kv_cache_write's arguments checked against its contract (shapes, dtypes, devices), from metadata alone (no
    host sync): a ValueError naming the argument and what it must be. Positions' values are not checked."""
    _check_format(fmt)
    if k.ndim != 4 or not k.is_floating_point():
        raise ValueError(f"kv_cache_write: k must be a floating [B, H, T, D] tensor, got {k.dtype} {tuple(k.shape)}")
    if v.shape != k.shape or not v.is_floating_point():
        raise ValueError(
            f"kv_cache_write: v must be floating and shaped like k {tuple(k.shape)}, got {v.dtype} {tuple(v.shape)}"
        )
    b, h, t, d = k.shape
    if fmt == "int4" and d % KV_INT4_GROUP:
        raise ValueError(f"kv_cache_write: int4 KV needs head_dim divisible by {KV_INT4_GROUP}, got {d}")
    if tuple(positions.shape) != (b, t) or positions.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"kv_cache_write: positions must be int32/int64 [B, T] = [{b}, {t}], got {positions.dtype} "
            f"{tuple(positions.shape)}"
        )
    if k_codes.ndim != 4 or k_codes.shape[0] < b or k_codes.shape[1] != h:
        raise ValueError(
            f"kv_cache_write: k_codes must be [B' >= {b}, {h}, S, ...] (a store of at least k's rows "
            f"and its heads), got {tuple(k_codes.shape)}"
        )
    rows, cap = k_codes.shape[0], k_codes.shape[2]
    stores = {
        "k_codes": k_codes,
        "k_scale": k_scale,
        "k_zero": k_zero,
        "v_codes": v_codes,
        "v_scale": v_scale,
        "v_zero": v_zero,
    }
    for which in ("k", "v"):
        for part, layout in zip(("codes", "scale", "zero"), _store_layout(fmt, d), strict=True):
            name = f"{which}_{part}"
            store = stores[name]
            if layout is None:
                if store is not None:
                    raise ValueError(f"kv_cache_write: {name} must be None for fmt {fmt!r}, got a tensor")
                continue
            kind, last = layout
            want = (rows, h, cap, last)
            dtype_ok = store is not None and (
                store.is_floating_point() if kind == "float" else store.dtype == _STORE_DTYPES[kind]
            )
            if store is None or tuple(store.shape) != want or not dtype_ok:
                got = "None" if store is None else f"{store.dtype} {tuple(store.shape)}"
                raise ValueError(
                    f"kv_cache_write: {name} must be {kind} {list(want)} for fmt {fmt!r} and head_dim {d}, got {got}"
                )
    if v_codes.dtype != k_codes.dtype:
        raise ValueError(f"kv_cache_write: v_codes must have k_codes' dtype {k_codes.dtype}, got {v_codes.dtype}")
    for name, tensor in (("v", v), ("positions", positions), *stores.items()):
        if tensor is not None and tensor.device != k.device:
            raise ValueError(f"kv_cache_write: {name} is on {tensor.device}, k on {k.device}; all must share a device")


_BITS_OF_WIDTH = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _scatter_rows(store: torch.Tensor, new: torch.Tensor, positions: torch.Tensor) -> None:
    """store[b, h, positions[b, t], :] = new[b, h, t, :] for store [B, H, S, c], new [B, H, T, c] of its dtype,
    positions [B, T]. Values move as their bits (an integer view of the same width): the CPU has no float8 scatter,
    and its scatter of 16-bit floats rewrites signalling NaNs anywhere in the store, not only where it writes."""
    b, h, t, c = new.shape
    index = positions.to(torch.int64).view(b, 1, t, 1).expand(b, h, t, c)
    bits = _BITS_OF_WIDTH[store.dtype.itemsize]
    store.view(bits).scatter_(2, index, new.view(bits))


def kv_cache_write(
    k: torch.Tensor,
    v: torch.Tensor,
    positions: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
) -> None:
    """Quantize new K and V [B, H, T, D] into `fmt` (kv_quantize's rules, bit for bit) and store token t of row b
    at position positions[b, t] of rows 0 .. B - 1 of the stores, in place (reference).

    positions: int32/int64 [B, T], each in [0, S) and distinct within a row (not checked: a check needs a host
    sync). Stores: [B' >= B, H, S, c] as kv_quantize makes them (module docstring): codes (the model's float dtype
    for "none", where K/V are cast to it as copy_ would; int8; float8_e4m3fn; uint8 int4 pairs), scale and zero
    point, None where the format has none. Rows from B on and positions not written keep what they held.
    Mutating instead of returning lets a backend fuse the whole write into one kernel with no temporaries.
    """
    check_kv_cache_write(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)
    b = k.shape[0]
    for new, stores in ((k, (k_codes, k_scale, k_zero)), (v, (v_codes, v_scale, v_zero))):
        for store, fresh in zip(stores, kv_quantize(new, fmt), strict=True):
            if store is not None:
                assert fresh is not None
                _scatter_rows(store[:b], fresh.to(store.dtype), positions)
