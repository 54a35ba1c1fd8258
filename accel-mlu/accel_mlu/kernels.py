"""accel's kernel ops on Cambricon MLUs through torch_mlu_ops (Cambricon's LLM operator library), with the portable
reference (accel.runtime.ops) where no operator's signature could be confirmed.

Cambricon's torch_mlu_ops documentation is not public; the call sites below follow DeepLink's dlinfer, which drives
these operators for LMDeploy on MLUs (dlinfer/vendor/camb/camb_ops.py in DeepLink-org/dlinfer), argument for
argument:

- w8a8_int8_linear -> tmo.per_token_smooth_quantize(x, smooth=smooth) -> (int8 x, per-token scale), with a smooth
  vector of ones (plain per-token quantization), then tmo.smooth_quant_matmul(a, a_scale, b, b_scale, dtype, bias)
  with b the int8 weight [N, K] and b_scale its per-channel scales (dlinfer's linear_w8a8 and dynamic_quant).
- cached_attention (decode, 16-bit cache) -> tmo.single_query_cached_kv_attn(q, k_cache, v_cache, out, block_table,
  context_lens, k_cache_quant_scale, v_cache_quant_scale, alibi_slopes, max_context_len, 0, 0, softmax_scale)
  (dlinfer's paged_decode_attention): q and out [B, 1, Hq, D]; the caches [blocks, Hkv, block_size, D]. accel's
  static cache [B, Hkv, S, D] is that paged layout with one block of S positions per row, so block_table is
  [[0], [1], ...] and context_lens the rows' lengths; max_context_len is the capacity S (no host sync).

On the reference: W4A16 and W8A16 (torch_mlu_ops' weight-only matmul signature could not be confirmed from a public
source), float32 inputs, int8 / int4 / fp8 KV (the scale layout of the operator's cache quantization is not
documented publicly), and steps with more than one new token per row. None of this has run on an MLU.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from accel.runtime import ops as reference

DEVICE_TYPE = "mlu"
VENDOR_DTYPES = (torch.float16, torch.bfloat16)


def _tmo() -> Any:
    return importlib.import_module("torch_mlu_ops")


def on_vendor(x: torch.Tensor) -> bool:
    """Whether a tensor is where torch_mlu_ops can take it: on the MLU, in float16 or bfloat16."""
    return x.device.type == DEVICE_TYPE and x.dtype in VENDOR_DTYPES


def w8a8_int8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """accel.runtime.ops.w8a8_int8_linear through per_token_smooth_quantize + smooth_quant_matmul."""
    if not on_vendor(x):
        return reference.w8a8_int8_linear(x, weight_q, weight_scale, bias)
    tmo = _tmo()
    k, n = x.shape[-1], weight_q.shape[0]
    smooth = torch.ones(k, dtype=torch.float32, device=x.device)
    x_q, x_scale = tmo.per_token_smooth_quantize(x.reshape(-1, k), smooth=smooth)
    y = tmo.smooth_quant_matmul(x_q, x_scale, weight_q, weight_scale.reshape(-1).to(torch.float32), x.dtype, bias)
    return y.reshape(*x.shape[:-1], n)


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
    """accel.runtime.kv_ops.cached_attention: decode over a 16-bit cache through single_query_cached_kv_attn."""
    args = (q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale)
    if not (on_vendor(q) and q.shape[2] == 1 and fmt == "none"):
        return reference.cached_attention(*args)
    b = q.shape[0]
    query = q.transpose(1, 2).contiguous()  # [B, 1, Hq, D]
    out = torch.empty_like(query)
    block_table = torch.arange(b, dtype=torch.int32, device=q.device).view(b, 1)
    _tmo().single_query_cached_kv_attn(
        query, k_codes, v_codes, out, block_table, seq_lens.to(torch.int32), None, None, None, k_codes.shape[2],
        0, 0, sm_scale,
    )
    return out.transpose(1, 2)  # [B, Hq, 1, D]


w8a8_int8_linear.native_variants = frozenset({"w8a8-int8"})  # type: ignore[attr-defined]
cached_attention.native_variants = frozenset({"16-bit"})  # type: ignore[attr-defined]
KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "w8a8_int8_linear": w8a8_int8_linear,
    "cached_attention": cached_attention,
}
