"""accel-cuda's Triton kernels. Importing this package does not import Triton: each entry point loads its
module (and Triton) on first call, so discovery and selection stay cheap on machines without a GPU."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

__all__ = [
    "add_rms_norm",
    "add_rms_norm_quant",
    "cached_attention",
    "dequant_linear",
    "fp8_linear",
    "kv_cache_write",
    "norm_fold_accepts",
    "qkv_fold_accepts",
    "rms_norm",
    "rms_norm_quant",
    "rotary_embedding",
    "rotary_kv_cache_write",
    "silu_and_mul",
    "silu_and_mul_quant",
    "triton_available",
    "w4a16_linear",
    "w4a16_linear_residual",
    "w4a16_linear_rms",
    "w4a16_linear_rope_kv",
    "w4a16_linear_silu_mul",
    "w4a16_prepare",
    "w4a16_sparse24_linear",
    "w4a16_sparse24_prepare",
    "w8a8_int8_linear",
    "w8a8_scaled_mm",
]


def triton_available() -> bool:
    """True when Triton is installed (found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def dequant_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """Weight-only int linear on unpacked int8 codes (accel_cuda.kernels.w8a16.dequant_linear), imported on first
    call."""
    from accel_cuda.kernels.w8a16 import dequant_linear as impl

    return impl(x, q, scale, zero_point, group_size, bias, **kwargs)


def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The Triton W4A16 linear (accel_cuda.kernels.w4a16.w4a16_linear), imported on first call."""
    from accel_cuda.kernels.w4a16 import w4a16_linear as impl

    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, **kwargs)


def w4a16_linear_residual(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """W4A16 linear + residual add + the next norm's weight (accel_cuda.kernels.norm_fold), imported on first call."""
    from accel_cuda.kernels.norm_fold import w4a16_linear_residual as impl

    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, residual, norm_weight, **kwargs)


def w4a16_linear_rms(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor,
    eps: float,
    **kwargs: Any,
) -> torch.Tensor:
    """W4A16 linear with RMSNorm's per-row scale (accel_cuda.kernels.norm_fold), imported on first call."""
    from accel_cuda.kernels.norm_fold import w4a16_linear_rms as impl

    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps, **kwargs)


def w4a16_linear_silu_mul(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor | None,
    eps: float,
    **kwargs: Any,
) -> torch.Tensor:
    """W4A16 gate | up linear with SwiGLU in its epilogue (accel_cuda.kernels.norm_fold), imported on first call."""
    from accel_cuda.kernels.norm_fold import w4a16_linear_silu_mul as impl

    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps, **kwargs)


def norm_fold_accepts(op: str, *args: Any, **kwargs: Any) -> bool:
    """KernelChoice.accepts of the norm-folding ops (accel_cuda.kernels.norm_fold.accepts), imported on first call."""
    from accel_cuda.kernels.norm_fold import accepts

    return accepts(op, *args, **kwargs)


def w4a16_linear_rope_kv(*args: Any, **kwargs: Any) -> torch.Tensor:
    """The q | k | v W4A16 linear with RoPE and the 16-bit KV cache write in its epilogue
    (accel_cuda.kernels.qkv_fold; accel.runtime.qkv_fold_ops' arguments), imported on first call."""
    from accel_cuda.kernels.qkv_fold import w4a16_linear_rope_kv as impl

    return impl(*args, **kwargs)


def qkv_fold_accepts(*args: Any, **kwargs: Any) -> bool:
    """KernelChoice.accepts of w4a16_linear_rope_kv (accel_cuda.kernels.qkv_fold.accepts), imported on first call."""
    from accel_cuda.kernels.qkv_fold import accepts

    return accepts(*args, **kwargs)


def w4a16_prepare(
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Load-time conversion for w4a16_linear (accel_cuda.kernels.w4a16.prepare: nibbles permuted for the decode
    GEMV), imported on first call."""
    from accel_cuda.kernels.w4a16 import prepare

    return prepare(weight_packed, weight_scale, weight_zero_point, group_size)


def w4a16_sparse24_linear(
    x: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The 2:4 x int4 linear (accel_cuda.kernels.sparse24.w4a16_sparse24_linear), imported on first call."""
    from accel_cuda.kernels.sparse24 import w4a16_sparse24_linear as impl

    return impl(x, values, indices, weight_scale, weight_zero_point, group_size, **kwargs)


def w4a16_sparse24_prepare(
    values: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Load-time conversion for w4a16_sparse24_linear into the GEMV's layout (accel_cuda.kernels.sparse24.prepare)."""
    from accel_cuda.kernels.sparse24 import prepare

    return prepare(values, indices, weight_scale, weight_zero_point, group_size)


def w8a8_int8_linear(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The int8 W8A8 linear (accel_cuda.kernels.w8a8.w8a8_int8_linear), imported on first call."""
    from accel_cuda.kernels.w8a8 import w8a8_int8_linear as impl

    return impl(x, weight_q, weight_scale, bias, **kwargs)


def fp8_linear(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """The fp8 W8A8 linear (accel_cuda.kernels.w8a8.fp8_linear), imported on first call."""
    from accel_cuda.kernels.w8a8 import fp8_linear as impl

    return impl(x, weight_fp8, weight_scale, input_scale, bias, **kwargs)


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
    **kwargs: Any,
) -> torch.Tensor:
    """Flash-decoding over the static KV cache (accel_cuda.kernels.attention.cached_attention), imported on first
    call."""
    from accel_cuda.kernels.attention import cached_attention as impl

    return impl(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale, **kwargs)


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
    **kwargs: Any,
) -> None:
    """The fused KV cache write: K and V quantized and stored at their positions in one launch
    (accel_cuda.kernels.kv_write.kv_cache_write), imported on first call."""
    from accel_cuda.kernels.kv_write import kv_cache_write as impl

    impl(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt, **kwargs)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, **kwargs: Any) -> torch.Tensor:
    """RMSNorm in one launch (accel_cuda.kernels.norm.rms_norm), imported on first call."""
    from accel_cuda.kernels.norm import rms_norm as impl

    return impl(x, weight, eps, **kwargs)


def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE on q and k in one launch (accel_cuda.kernels.rope.rotary_embedding), imported on first call."""
    from accel_cuda.kernels.rope import rotary_embedding as impl

    return impl(q, k, cos, sin, **kwargs)


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
    **kwargs: Any,
) -> torch.Tensor:
    """RoPE on q and k fused with the KV cache write, in one launch (accel_cuda.kernels.rope_kv_write
    .rotary_kv_cache_write), imported on first call."""
    from accel_cuda.kernels.rope_kv_write import rotary_kv_cache_write as impl

    return impl(q, k, v, cos, sin, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt, **kwargs)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm in one launch (accel_cuda.kernels.norm.add_rms_norm), imported on first call."""
    from accel_cuda.kernels.norm import add_rms_norm as impl

    return impl(x, residual, weight, eps, **kwargs)


def silu_and_mul(x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """SwiGLU's silu(gate) * up in one launch (accel_cuda.kernels.act.silu_and_mul), imported on first call."""
    from accel_cuda.kernels.act import silu_and_mul as impl

    return impl(x, **kwargs)


def rms_norm_quant(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm with its output quantized per token (int8 / e4m3 codes and scales) in one launch
    (accel_cuda.kernels.norm.rms_norm_quant), imported on first call."""
    from accel_cuda.kernels.norm import rms_norm_quant as impl

    return impl(x, weight, eps, fp8, **kwargs)


def add_rms_norm_quant(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool, **kwargs: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Residual add + RMSNorm, the normalized h quantized per token, in one launch
    (accel_cuda.kernels.norm.add_rms_norm_quant), imported on first call."""
    from accel_cuda.kernels.norm import add_rms_norm_quant as impl

    return impl(x, residual, weight, eps, fp8, **kwargs)


def silu_and_mul_quant(x: torch.Tensor, fp8: bool, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """SwiGLU's silu(gate) * up quantized per token in one launch (accel_cuda.kernels.act.silu_and_mul_quant),
    imported on first call."""
    from accel_cuda.kernels.act import silu_and_mul_quant as impl

    return impl(x, fp8, **kwargs)


def w8a8_scaled_mm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    **kwargs: Any,
) -> torch.Tensor:
    """The W8A8 GEMM on already-quantized activations (accel_cuda.kernels.w8a8.w8a8_scaled_mm), imported on first
    call."""
    from accel_cuda.kernels.w8a8 import w8a8_scaled_mm as impl

    return impl(x_codes, x_scale, weight, weight_scale, bias, out_dtype, **kwargs)
