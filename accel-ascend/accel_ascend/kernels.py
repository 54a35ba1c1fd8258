"""accel's kernel ops on Ascend NPUs through torch_npu's own quantized operators, with the portable reference
(accel.runtime.ops) wherever an operator's documented constraints are not met.

Each call site follows the signature and constraints in the torch_npu API docs of Ascend/op-plugin
(https://github.com/Ascend/op-plugin/tree/master/docs/context):

- w4a16_linear / dequant_linear -> torch_npu.npu_weight_quant_batchmatmul(x, weight, antiquant_scale,
  antiquant_offset=None, quant_scale=None, quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0)
  (torch_npu-npu_weight_quant_batchmatmul.md). It computes y = x @ ((weight + antiquant_offset) * antiquant_scale)
  with weight (K, N), scales and offsets (ceil(K / g), N) per group or (1, N) per channel, x float16/bfloat16 (M, K)
  and the scales in x's dtype; group sizes a multiple of 32 in [32, K - 1]; transposed (non-contiguous) weight and
  scales allowed. accel's W = (q - zp) * s, so antiquant_offset = -zp. int4 weights travel as int32 made by
  torch_npu.npu_convert_weight_to_int4pack(weight, inner_k_tiles=0) from int32 values in [-8, 7], last dimension
  a multiple of 8 (torch_npu-npu_convert_weight_to_int4pack.md); we pack (N, K) so the packed weight stays one row
  per output channel and pass its transpose.
- w8a8_int8_linear -> torch_npu.npu_dynamic_quant(x, *, smooth_scales=None, group_index=None, dst_type=None)
  (per-token symmetric int8, scale = rowmax|x| / 127; torch_npu-npu_dynamic_quant.md), then
  torch_npu.npu_quant_matmul(x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, output_dtype=None)
  with x2 = the (K, N) transpose of accel's int8 (N, K) weight, scale = float32 per-channel weight scales (N,),
  pertoken_scale = float32 (M,), bias float32, output_dtype float16/bfloat16 (torch_npu-npu_quant_matmul.md, table 2).
- cached_attention (decode, one new token per row) -> torch_npu.npu_fused_infer_attention_score(query, key, value,
  *, actual_seq_lengths_kv=..., num_heads=..., scale=..., input_layout="BNSD", num_key_value_heads=...,
  key_antiquant_scale=..., value_antiquant_scale=..., key_antiquant_mode=3, value_antiquant_mode=3)
  (torch_npu-npu_fused_infer_attention_score.md): BNSD query (B, N, 1, D) over the static cache (B, N_kv, S, D);
  for int8 KV the per-token-per-head mode 3 takes float32 scales of shape (B, N_kv, S), which is accel's int8 KV
  scale [b, h, S, 1] squeezed. Returns (attention_out, softmax_lse).

What stays on the portable reference, and why: float32 inputs (none of these operators takes float32
activations); per-group sizes that are not a multiple of 32 or not below K; fp8 anything (no fp8 on A2/A3);
verification / chunked prefill steps (T > 1: the operator's causal mask for queries at the end of ragged rows is
not the decode path we can check against the documentation); fp8 and int4 KV (accel's int4 KV is grouped
per-token asymmetric, not a layout the operator documents).

None of this has run on an NPU. Importing this module does not import torch_npu; each call does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from accel.runtime import ops as reference
from accel.runtime.packing import unpack_int32

DEVICE_TYPE = "npu"
VENDOR_DTYPES = (torch.float16, torch.bfloat16)
GROUP_ALIGN = 32


def _torch_npu() -> Any:
    return importlib.import_module("torch_npu")


def on_vendor(x: torch.Tensor) -> bool:
    """Whether a tensor is where torch_npu's operators can take it: on the NPU, in float16 or bfloat16."""
    return x.device.type == DEVICE_TYPE and x.dtype in VENDOR_DTYPES


def _group_ok(group_size: int, k: int) -> bool:
    """antiquant_group_size: 0 (per channel) or a multiple of 32 in [32, K - 1] (the operator's constraint)."""
    return group_size <= 0 or (group_size % GROUP_ALIGN == 0 and GROUP_ALIGN <= group_size < k)


def _native(*variants: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Mark the formats a kernel runs with the vendor operator (read by accel.planning.planner)."""

    def mark(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn.native_variants = frozenset(variants)  # type: ignore[attr-defined]
        return fn

    return mark


def _antiquant(
    scale: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """accel's [N, G] scale and int8 zero point as the operator's (G, N) antiquant_scale / antiquant_offset in x's
    dtype (transposed views): W = (q - zp) * s = (q + offset) * s with offset = -zp."""
    offset = None if zero_point is None else (-zero_point.to(dtype)).transpose(0, 1)
    return scale.to(dtype).transpose(0, 1), offset


def w4a16_prepare(
    weight_packed: torch.Tensor, weight_scale: torch.Tensor, weight_zero_point: torch.Tensor | None, group_size: int
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Load-time conversion (KernelChoice.prepare): accel's pack-quantized int32 [N, K/8] re-packed by
    npu_convert_weight_to_int4pack into the operator's int4-in-int32 layout, still (N, K/8), one row per output
    channel, so fused layers can concatenate it. Weights not on the NPU stay as they are."""
    if weight_packed.device.type != DEVICE_TYPE:
        return (weight_packed, weight_scale, weight_zero_point, group_size), {}
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 8
    codes = unpack_int32(weight_packed, 4, (n, k)).to(torch.int32)  # [N, K] in [-8, 7]
    packed = _torch_npu().npu_convert_weight_to_int4pack(codes.contiguous(), inner_k_tiles=0)
    return (packed, weight_scale, weight_zero_point, group_size), {"npu_int4pack": True}


@_native("w4a16", "w4a16-asym")
def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    npu_int4pack: bool = False,
) -> torch.Tensor:
    """accel.runtime.ops.w4a16_linear through npu_weight_quant_batchmatmul with an int4 weight (module docstring)."""
    k, n = x.shape[-1], weight_packed.shape[0]
    if not (on_vendor(x) and k % 8 == 0 and _group_ok(group_size, k)):
        if npu_int4pack:
            raise ValueError("w4a16_linear: weights repacked for the NPU need float16/bfloat16 inputs on the NPU")
        return reference.w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size)
    npu = _torch_npu()
    if not npu_int4pack:
        (weight_packed, *_), _ = w4a16_prepare(weight_packed, weight_scale, weight_zero_point, group_size)
    scale, offset = _antiquant(weight_scale, weight_zero_point, x.dtype)
    y = npu.npu_weight_quant_batchmatmul(
        x.reshape(-1, k), weight_packed.transpose(0, 1), scale, antiquant_offset=offset,
        antiquant_group_size=max(group_size, 0),
    )
    return y.reshape(*x.shape[:-1], n)


@_native("w8a16", "w4a16", "w4a16-asym")
def dequant_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """accel's dequant_linear (unpacked int codes [N, K] in int8) through npu_weight_quant_batchmatmul with an int8
    weight, transposed to (K, N); bias float32 for bfloat16 x, x's dtype for float16 (the operator's rule)."""
    k, n = x.shape[-1], q.shape[0]
    if not (on_vendor(x) and q.dtype == torch.int8 and _group_ok(group_size, k)):
        return reference.OPS["dequant_linear"].reference(x, q, scale, zero_point, group_size, bias)
    antiquant_scale, offset = _antiquant(scale, zero_point, x.dtype)
    if bias is not None:
        bias = bias.to(torch.float32 if x.dtype == torch.bfloat16 else x.dtype)
    y = _torch_npu().npu_weight_quant_batchmatmul(
        x.reshape(-1, k), q.transpose(0, 1), antiquant_scale, antiquant_offset=offset, bias=bias,
        antiquant_group_size=max(group_size, 0),
    )
    return y.reshape(*x.shape[:-1], n)


@_native("w8a8-int8")
def w8a8_int8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """accel.runtime.ops.w8a8_int8_linear: npu_dynamic_quant for the per-token int8 activations, then
    npu_quant_matmul with per-channel and per-token float32 scales (module docstring)."""
    if not on_vendor(x):
        return reference.w8a8_int8_linear(x, weight_q, weight_scale, bias)
    npu = _torch_npu()
    k, n = x.shape[-1], weight_q.shape[0]
    x_q, x_scale = npu.npu_dynamic_quant(x.reshape(-1, k))  # int8 (M, K), float32 (M,)
    y = npu.npu_quant_matmul(
        x_q, weight_q.transpose(0, 1), weight_scale.reshape(-1).to(torch.float32), pertoken_scale=x_scale,
        bias=None if bias is None else bias.to(torch.float32), output_dtype=x.dtype,
    )
    return y.reshape(*x.shape[:-1], n)


@_native("16-bit", "kv-int8")
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
    """accel.runtime.kv_ops.cached_attention: decode steps (T = 1) over a 16-bit or int8 cache through
    npu_fused_infer_attention_score; everything else through the reference (module docstring)."""
    args = (q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale)
    if not (on_vendor(q) and q.shape[2] == 1 and fmt in ("none", "int8")):
        return reference.cached_attention(*args)
    hq, hkv = q.shape[1], k_codes.shape[1]
    quant: dict[str, Any] = {}
    if fmt == "int8":
        assert k_scale is not None and v_scale is not None
        quant = {
            "key_antiquant_scale": k_scale.squeeze(-1).to(torch.float32),  # (B, N_kv, S), per token and head
            "value_antiquant_scale": v_scale.squeeze(-1).to(torch.float32),
            "key_antiquant_mode": 3,
            "value_antiquant_mode": 3,
        }
    out, _ = _torch_npu().npu_fused_infer_attention_score(
        q.contiguous(), k_codes, v_codes, actual_seq_lengths_kv=seq_lens.tolist(), num_heads=hq, scale=sm_scale,
        input_layout="BNSD", num_key_value_heads=hkv, **quant,
    )
    return out


KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "w4a16_linear": w4a16_linear,
    "dequant_linear": dequant_linear,
    "w8a8_int8_linear": w8a8_int8_linear,
    "cached_attention": cached_attention,
}
PREPARE: dict[str, Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]] = {"w4a16_linear": w4a16_prepare}
