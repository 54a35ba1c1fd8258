"""accel-cuda's hooks: registers the CUDA backend and answers kernel selection only for ops it has.

The kernel table holds the Triton kernels (when Triton is installed): W4A16 and W8A16 (dequant_linear) linear (W4A16
also with the RMSNorm after / before it and SwiGLU folded in: w4a16_linear_residual, w4a16_linear_rms,
w4a16_linear_silu_mul; RoPE and the 16-bit KV cache write in the q/k/v GEMV: w4a16_linear_rope_kv), int8
and fp8 W8A8 linear, flash-decoding attention over the static KV cache and the fused write into it, RMSNorm, RoPE
on q and k in one launch (and fused with the KV cache write: rotary_kv_cache_write), the residual add fused into
RMSNorm (add_rms_norm), and SwiGLU's silu(gate) * up (silu_and_mul); the W8A8 activation quantization fused into the
norms and SwiGLU (rms_norm_quant, add_rms_norm_quant, silu_and_mul_quant) and the W8A8 GEMM on those codes
(w8a8_scaled_mm); every other op on a CUDA device falls through to core's portable reference. Importing this module
does not import Triton.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from accel.plugins import KernelBackendSpec, KernelChoice, hookimpl
from accel.schema import CapabilityDescriptor
from accel_cuda.platform import CudaPlatform

BACKEND = "cuda"
# Ops that run their fused GEMV only where it is planned (KernelChoice.accepts), a correct fallback elsewhere.
FOLD_OPS = ("w4a16_linear_residual", "w4a16_linear_rms", "w4a16_linear_silu_mul", "w4a16_linear_rope_kv")


def kernels() -> dict[str, Callable[..., Any]]:
    """This backend's own kernels by op name (Triton ones only where Triton is installed); ops not here run
    the reference kernels. Imported here, lazily, so that loading the plugin stays free of Triton."""
    from accel_cuda.kernels import (
        add_rms_norm,
        add_rms_norm_quant,
        cached_attention,
        dequant_linear,
        fp8_linear,
        kv_cache_write,
        rms_norm,
        rms_norm_quant,
        rotary_embedding,
        rotary_kv_cache_write,
        silu_and_mul,
        silu_and_mul_quant,
        triton_available,
        w4a16_linear,
        w4a16_linear_residual,
        w4a16_linear_rms,
        w4a16_linear_rope_kv,
        w4a16_linear_silu_mul,
        w4a16_sparse24_linear,
        w8a8_int8_linear,
        w8a8_scaled_mm,
    )

    if not triton_available():
        return {}
    return {
        "dequant_linear": dequant_linear,
        "w4a16_linear": w4a16_linear,
        "w4a16_linear_residual": w4a16_linear_residual,
        "w4a16_linear_rms": w4a16_linear_rms,
        "w4a16_linear_silu_mul": w4a16_linear_silu_mul,
        "w4a16_linear_rope_kv": w4a16_linear_rope_kv,
        "w4a16_sparse24_linear": w4a16_sparse24_linear,
        "w8a8_int8_linear": w8a8_int8_linear,
        "fp8_linear": fp8_linear,
        "cached_attention": cached_attention,
        "kv_cache_write": kv_cache_write,
        "rms_norm": rms_norm,
        "rotary_embedding": rotary_embedding,
        "rotary_kv_cache_write": rotary_kv_cache_write,
        "add_rms_norm": add_rms_norm,
        "silu_and_mul": silu_and_mul,
        "rms_norm_quant": rms_norm_quant,
        "add_rms_norm_quant": add_rms_norm_quant,
        "silu_and_mul_quant": silu_and_mul_quant,
        "w8a8_scaled_mm": w8a8_scaled_mm,
    }


@hookimpl
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """The CUDA backend, ahead of the reference and the other vendor backends."""
    return [
        KernelBackendSpec(
            name=BACKEND,
            description=(
                "NVIDIA GPUs through PyTorch CUDA: Triton W4A16 (dense and 2:4-sparse; RMSNorm, SwiGLU, RoPE and "
                "the 16-bit KV cache write folded into the decode GEMVs around them), W8A16 and W8A8 (int8, fp8) "
                "linear, flash-decoding over the quantized KV cache and its fused quantize-and-write, fused RMSNorm, "
                "fused RoPE (q and k in one launch; fused with the KV cache write at decode), fused residual add + "
                "RMSNorm and SwiGLU silu-and-mul, W8A8 activation quantization fused into RMSNorm / add + RMSNorm / "
                "silu-and-mul and the W8A8 GEMM on those codes; portable reference kernels otherwise"
            ),
            device_type=CudaPlatform.device_type,
            is_available=CudaPlatform.is_available,
            capability=CudaPlatform.capability,
            kernels=kernels,
            priority=10,
        )
    ]


@hookimpl
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """This backend's kernel for `op` on a CUDA device; None otherwise, so the reference answers."""
    impl = kernels().get(op)
    if capability.device_type != CudaPlatform.device_type or impl is None:
        return None
    from accel_cuda.kernels import norm_fold_accepts, qkv_fold_accepts, w4a16_prepare, w4a16_sparse24_prepare

    prepare = {"w4a16_linear": w4a16_prepare, "w4a16_sparse24_linear": w4a16_sparse24_prepare}.get(op)
    accepts = None
    if op in FOLD_OPS:
        accepts = qkv_fold_accepts if op == "w4a16_linear_rope_kv" else functools.partial(norm_fold_accepts, op)
    from accel_cuda.kernels.tuning import launch_note

    return KernelChoice(backend=BACKEND, op=op, impl=impl, reason="CUDA Triton kernel", prepare=prepare,
                        accepts=accepts, note=launch_note(op, capability.device_name))
