"""accel's kernel ops as torch.library custom ops (`torch.ops.accel.<name>`), so torch.compile traces through them.

Each op runs the kernel the plugin registry selects for its tensors' device: the backend's own kernel where
one is registered for the op (e.g. accel-cuda's Triton kernels), else the portable reference in
accel.runtime.ops, with the same arguments and result. The choice is made once per (op, device type) and
cached; `kernel_choice` tells which kernel runs. Each op's fake implementation gives torch.compile the output's
shape and dtype without running anything. The plain-Python references stay callable from accel.runtime.ops.

    y = torch.ops.accel.w8a8_int8_linear(x, weight_q, weight_scale, bias)

kv_cache_write returns nothing and declares the cache tensors it stores into as mutated (`mutates_args`), so
torch.compile functionalizes it (auto_functionalize) instead of treating it as pure. Its scale and zero-point
stores are Optional (None for formats without them): torch.library accepts Optional mutated tensors (schema
`Tensor(a!)?`), so no placeholder tensors are needed. rotary_kv_cache_write and w4a16_linear_rope_kv (the q/k/v
projection with it in the epilogue) declare the same stores mutated and return the rotated q, a new tensor.
"""

from __future__ import annotations

import functools

import torch

from accel.plugins.records import KernelChoice
from accel.runtime.ops import OPS

__all__ = [
    "add_rms_norm",
    "add_rms_norm_quant",
    "block_sparse_linear",
    "cached_attention",
    "dequant_linear",
    "fp8_linear",
    "kernel_choice",
    "kv_cache_write",
    "rms_norm",
    "rms_norm_quant",
    "rotary_embedding",
    "rotary_kv_cache_write",
    "silu_and_mul",
    "silu_and_mul_quant",
    "w4a16_linear",
    "w4a16_linear_residual",
    "w4a16_linear_rms",
    "w4a16_linear_rope_kv",
    "w4a16_linear_silu_mul",
    "w4a16_sparse24_linear",
    "w8a8_int8_linear",
    "w8a8_scaled_mm",
]

# A backend's CapabilityDescriptor.device_type -> the torch device type its tensors live on.
_TORCH_DEVICE = {"dcu": "cuda"}


@functools.cache
def kernel_choice(op: str, device_type: str) -> KernelChoice:
    """Who runs `op` for tensors on `device_type` ("cpu", "cuda", ...): the available backend of highest priority
    for that device answers through the registry; the reference where no backend claims the device."""
    from accel.plugins.registry import get_registry

    registry = get_registry()
    for spec in sorted(registry.kernel_backends().values(), key=lambda b: -b.priority):
        if _TORCH_DEVICE.get(spec.device_type, spec.device_type) == device_type and spec.is_available():
            return registry.select_kernel(op, spec.capability())
    return KernelChoice(backend="reference", op=op, impl=OPS[op].reference, reason=f"no backend for {device_type}")


def _linear_shape(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("accel::dequant_linear", mutates_args=())
def dequant_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """accel.quantization.kernels.reference.dequant_linear, on the selected kernel."""
    return kernel_choice("dequant_linear", x.device.type).impl(x, q, scale, zero_point, group_size, bias)


@dequant_linear.register_fake
def _(x, q, scale, zero_point, group_size, bias=None):  # type: ignore[no-untyped-def]
    return _linear_shape(x, q)


@torch.library.custom_op("accel::w4a16_linear", mutates_args=())
def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """accel.runtime.ops.w4a16_linear, on the selected kernel."""
    impl = kernel_choice("w4a16_linear", x.device.type).impl
    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size)


@w4a16_linear.register_fake
def _(x, weight_packed, weight_scale, weight_zero_point, group_size):  # type: ignore[no-untyped-def]
    return _linear_shape(x, weight_packed)


@torch.library.custom_op("accel::w4a16_linear_residual", mutates_args=())
def w4a16_linear_residual(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """accel.runtime.norm_fold_ops.w4a16_linear_residual ((h, h * norm_weight, ss), new tensors), on the selected
    kernel."""
    impl = kernel_choice("w4a16_linear_residual", x.device.type).impl
    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, residual, norm_weight)


@w4a16_linear_residual.register_fake
def _(x, weight_packed, weight_scale, weight_zero_point, group_size, residual, norm_weight):  # type: ignore[no-untyped-def]
    # ss's partial-sum count is the kernel's choice: a data-dependent size for tracing
    parts = torch.library.get_ctx().new_dynamic_size()
    return _linear_shape(x, weight_packed), _linear_shape(x, weight_packed), x.new_empty((*x.shape[:-1], parts),
                                                                                          dtype=torch.float32)


@torch.library.custom_op("accel::w4a16_linear_rms", mutates_args=())
def w4a16_linear_rms(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """accel.runtime.norm_fold_ops.w4a16_linear_rms, on the selected kernel."""
    impl = kernel_choice("w4a16_linear_rms", x.device.type).impl
    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps)


@w4a16_linear_rms.register_fake
def _(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps):  # type: ignore[no-untyped-def]
    return _linear_shape(x, weight_packed)


@torch.library.custom_op("accel::w4a16_linear_silu_mul", mutates_args=())
def w4a16_linear_silu_mul(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """accel.runtime.norm_fold_ops.w4a16_linear_silu_mul, on the selected kernel."""
    impl = kernel_choice("w4a16_linear_silu_mul", x.device.type).impl
    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps)


@w4a16_linear_silu_mul.register_fake
def _(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], weight_packed.shape[0] // 2))


@torch.library.custom_op(
    "accel::w4a16_linear_rope_kv", mutates_args=("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")
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
    """accel.runtime.qkv_fold_ops.w4a16_linear_rope_kv (q rotated, a new tensor; rotated k and v stored in place), on
    the selected kernel."""
    impl = kernel_choice("w4a16_linear_rope_kv", x.device.type).impl
    return impl(
        x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps, cos, sin, positions,
        k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt, num_heads,
    )


@w4a16_linear_rope_kv.register_fake
def _(  # type: ignore[no-untyped-def]
    x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps, cos, sin, positions,
    k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt, num_heads,
):
    return x.new_empty((*x.shape[:-1], num_heads, cos.shape[-1]))  # q rotated [B, T, H, D]


@torch.library.custom_op("accel::w4a16_sparse24_linear", mutates_args=())
def w4a16_sparse24_linear(
    x: torch.Tensor,
    values_packed: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """accel.runtime.ops.w4a16_sparse24_linear (compact 2:4 form), on the selected kernel."""
    impl = kernel_choice("w4a16_sparse24_linear", x.device.type).impl
    return impl(x, values_packed, indices, weight_scale, weight_zero_point, group_size)


@w4a16_sparse24_linear.register_fake
def _(x, values_packed, indices, weight_scale, weight_zero_point, group_size):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], values_packed.shape[0]))


@torch.library.custom_op("accel::block_sparse_linear", mutates_args=())
def block_sparse_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    block_index: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """accel.runtime.ops.block_sparse_linear (kept blocks only), on the selected kernel."""
    return kernel_choice("block_sparse_linear", x.device.type).impl(x, blocks, block_index, out_features, bias)


@block_sparse_linear.register_fake
def _(x, blocks, block_index, out_features, bias=None):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], out_features))


@torch.library.custom_op("accel::w8a8_int8_linear", mutates_args=())
def w8a8_int8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """accel.runtime.ops.w8a8_int8_linear, on the selected kernel."""
    return kernel_choice("w8a8_int8_linear", x.device.type).impl(x, weight_q, weight_scale, bias)


@w8a8_int8_linear.register_fake
def _(x, weight_q, weight_scale, bias=None):  # type: ignore[no-untyped-def]
    return _linear_shape(x, weight_q)


@torch.library.custom_op("accel::fp8_linear", mutates_args=())
def fp8_linear(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """accel.runtime.ops.fp8_linear, on the selected kernel."""
    return kernel_choice("fp8_linear", x.device.type).impl(x, weight_fp8, weight_scale, input_scale, bias)


@fp8_linear.register_fake
def _(x, weight_fp8, weight_scale, input_scale=None, bias=None):  # type: ignore[no-untyped-def]
    return _linear_shape(x, weight_fp8)


@torch.library.custom_op("accel::cached_attention", mutates_args=())
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
    """accel.runtime.kv_ops.cached_attention, on the selected kernel."""
    impl = kernel_choice("cached_attention", q.device.type).impl
    return impl(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale)


@cached_attention.register_fake
def _(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale):  # type: ignore[no-untyped-def]
    return torch.empty_like(q)


@torch.library.custom_op(
    "accel::kv_cache_write", mutates_args=("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")
)
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
    """accel.runtime.kv_ops.kv_cache_write (in place into the stores), on the selected kernel."""
    impl = kernel_choice("kv_cache_write", k.device.type).impl
    impl(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)


@kv_cache_write.register_fake
def _(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt):  # type: ignore[no-untyped-def]
    return None


@torch.library.custom_op("accel::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """accel.runtime.norm_ops.rms_norm, on the selected kernel."""
    return kernel_choice("rms_norm", x.device.type).impl(x, weight, eps)


@rms_norm.register_fake
def _(x, weight, eps):  # type: ignore[no-untyped-def]
    return torch.empty_like(x, dtype=torch.promote_types(weight.dtype, x.dtype))


@torch.library.custom_op("accel::rotary_embedding", mutates_args=())
def rotary_embedding(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """accel.runtime.rope_ops.rotary_embedding (q and k rotated, new contiguous tensors), on the selected kernel."""
    return kernel_choice("rotary_embedding", q.device.type).impl(q, k, cos, sin)


@rotary_embedding.register_fake
def _(q, k, cos, sin):  # type: ignore[no-untyped-def]
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op(
    "accel::rotary_kv_cache_write", mutates_args=("k_codes", "k_scale", "k_zero", "v_codes", "v_scale", "v_zero")
)
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
    """accel.runtime.rope_kv_ops.rotary_kv_cache_write (q rotated, a new tensor; rotated k and v stored in place), on
    the selected kernel."""
    impl = kernel_choice("rotary_kv_cache_write", q.device.type).impl
    return impl(q, k, v, cos, sin, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)


@rotary_kv_cache_write.register_fake
def _(q, k, v, cos, sin, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt):  # type: ignore[no-untyped-def]
    return q.new_empty(q.shape)


@torch.library.custom_op("accel::add_rms_norm", mutates_args=())
def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """accel.runtime.norm_ops.add_rms_norm ((normed, h), new tensors), on the selected kernel."""
    return kernel_choice("add_rms_norm", x.device.type).impl(x, residual, weight, eps)


@add_rms_norm.register_fake
def _(x, residual, weight, eps):  # type: ignore[no-untyped-def]
    return torch.empty_like(x, dtype=torch.promote_types(weight.dtype, x.dtype)), torch.empty_like(x)


@torch.library.custom_op("accel::silu_and_mul", mutates_args=())
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """accel.runtime.act_ops.silu_and_mul, on the selected kernel."""
    return kernel_choice("silu_and_mul", x.device.type).impl(x)


@silu_and_mul.register_fake
def _(x):  # type: ignore[no-untyped-def]
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


def _quantized_like(y_shape: torch.Size, x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fake (codes, scale) of an activation [..., K]: int8 / e4m3 codes [..., K] and float32 scales [..., 1]."""
    codes = x.new_empty(y_shape, dtype=torch.float8_e4m3fn if fp8 else torch.int8)
    return codes, x.new_empty((*y_shape[:-1], 1), dtype=torch.float32)


@torch.library.custom_op("accel::rms_norm_quant", mutates_args=())
def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """accel.runtime.fused_quant_ops.rms_norm_quant ((codes, scale) of rms_norm(x)), on the selected kernel."""
    return kernel_choice("rms_norm_quant", x.device.type).impl(x, weight, eps, fp8)


@rms_norm_quant.register_fake
def _(x, weight, eps, fp8):  # type: ignore[no-untyped-def]
    return _quantized_like(x.shape, x, fp8)


@torch.library.custom_op("accel::add_rms_norm_quant", mutates_args=())
def add_rms_norm_quant(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """accel.runtime.fused_quant_ops.add_rms_norm_quant ((codes, scale, h), new tensors), on the selected kernel."""
    return kernel_choice("add_rms_norm_quant", x.device.type).impl(x, residual, weight, eps, fp8)


@add_rms_norm_quant.register_fake
def _(x, residual, weight, eps, fp8):  # type: ignore[no-untyped-def]
    return (*_quantized_like(x.shape, x, fp8), torch.empty_like(x))


@torch.library.custom_op("accel::silu_and_mul_quant", mutates_args=())
def silu_and_mul_quant(x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """accel.runtime.fused_quant_ops.silu_and_mul_quant ((codes, scale) of silu_and_mul(x)), on the selected
    kernel."""
    return kernel_choice("silu_and_mul_quant", x.device.type).impl(x, fp8)


@silu_and_mul_quant.register_fake
def _(x, fp8):  # type: ignore[no-untyped-def]
    return _quantized_like(torch.Size((*x.shape[:-1], x.shape[-1] // 2)), x, fp8)


@torch.library.custom_op("accel::w8a8_scaled_mm", mutates_args=())
def w8a8_scaled_mm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """accel.runtime.ops.w8a8_scaled_mm (the W8A8 GEMM on quantized activations), on the selected kernel."""
    impl = kernel_choice("w8a8_scaled_mm", x_codes.device.type).impl
    return impl(x_codes, x_scale, weight, weight_scale, bias, out_dtype)


@w8a8_scaled_mm.register_fake
def _(x_codes, x_scale, weight, weight_scale, bias, out_dtype):  # type: ignore[no-untyped-def]
    return x_codes.new_empty((*x_codes.shape[:-1], weight.shape[0]), dtype=out_dtype)
