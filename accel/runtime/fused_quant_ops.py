"""W8A8 activation quantization fused into the kernel that produces the activation: the portable references of
`rms_norm_quant`, `add_rms_norm_quant` and `silu_and_mul_quant`.

A W8A8 linear (ops.w8a8_int8_linear, ops.fp8_linear) quantizes its input per token before the GEMM; at decode that
is a separate launch per linear (~3 us each, 128 per Llama-3-8B step). The decoder's linear inputs are produced by
three kernels, so, as vLLM does, a backend quantizes there instead, and the GEMM takes the codes (ops.w8a8_scaled_mm):

    rms_norm_quant(x, w, eps, fp8)            = quantize(rms_norm(x, w, eps))           before qkv and gate/up
    add_rms_norm_quant(x, r, w, eps, fp8)     = (*quantize(rms_norm(h, w, eps)), h)     h = x + r, the residual
    silu_and_mul_quant(x, fp8)                = quantize(silu_and_mul(x))               before down

quantize is activation_quant's dynamic per-token symmetric convention, exactly `quantize_activation(y, args)` with
args = ActivationQuantArgs(type="float" if fp8 else "int"): per row of y [..., K], s = max(max|y|, 1e-12) / qmax
(qmax 127 for int8, 448 for fp8 e4m3) in float32, codes = clamp(round_half_even(y / s), -127, 127) as int8, or
e4m3(clamp(y / s, -448, 448)); returns codes [..., K] (int8 / float8_e4m3fn) and s [..., 1] float32. y is the
unfused op's output in its own dtype (rms_norm: torch's promotion of the weight's and x's dtypes; silu_and_mul: x's),
so the codes are those of the activation the unfused model would have quantized, bit for bit.

A kernel computes y as the unfused kernel does, then quantizes it in registers as the W8A8 kernels' own quantizer
does: so its codes equal the unfused kernel pipeline's (norm kernel, then the quantizer) bit for bit. Against these
references it carries the unfused kernels' caveats (rms_norm: the sum of squares in another order; silu_and_mul:
another exp), which move a rare element of y one ulp of its dtype: that element's code by at most one, and, where it
is its row's largest, the row's scale by one ulp of y's dtype relative (OPS' tolerance for these ops says so).
"""

from __future__ import annotations

import torch

from accel.quantization.activation_quant import ActivationQuantArgs, quantize_activation
from accel.runtime.act_ops import silu_and_mul
from accel.runtime.norm_ops import rms_norm

__all__ = [
    "add_rms_norm_quant",
    "check_add_rms_norm_quant",
    "check_rms_norm_quant",
    "check_silu_and_mul_quant",
    "quant_args",
    "rms_norm_quant",
    "silu_and_mul_quant",
]


def quant_args(fp8: bool) -> ActivationQuantArgs:
    """activation_quant's dynamic per-token arguments: e4m3 codes when fp8, else int8."""
    return ActivationQuantArgs(type="float" if fp8 else "int")


def _check_fp8(op: str, fp8: object) -> None:
    if not isinstance(fp8, bool):
        raise ValueError(f"{op}: fp8 must be a bool (True: e4m3 codes, False: int8), got {fp8!r}")


def check_rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, fp8: bool) -> None:
    """A ValueError naming what is wrong when x [..., H], weight [H] and fp8 do not fit rms_norm_quant's contract."""
    if x.ndim < 1 or not x.is_floating_point() or x.shape[-1] == 0:
        raise ValueError(
            f"rms_norm_quant: x must be a floating-point tensor [..., hidden] with hidden >= 1, got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1] or not weight.is_floating_point():
        raise ValueError(
            f"rms_norm_quant: weight {weight.dtype} {tuple(weight.shape)} must be a floating-point [hidden] with "
            f"hidden = x's last dimension {x.shape[-1]}"
        )
    _check_fp8("rms_norm_quant", fp8)


def check_add_rms_norm_quant(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, fp8: bool) -> None:
    """A ValueError naming what is wrong when x, residual [..., H], weight [H] and fp8 do not fit add_rms_norm_quant's
    contract (x and residual of one shape and dtype; then rms_norm_quant's)."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"add_rms_norm_quant: residual {residual.dtype} {tuple(residual.shape)} must have x's shape and dtype, "
            f"{x.dtype} {tuple(x.shape)}"
        )
    try:
        check_rms_norm_quant(x, weight, fp8)
    except ValueError as error:
        raise ValueError(str(error).replace("rms_norm_quant:", "add_rms_norm_quant:", 1)) from None


def check_silu_and_mul_quant(x: torch.Tensor, fp8: bool) -> None:
    """A ValueError naming what is wrong when x and fp8 do not fit silu_and_mul_quant's contract: x floating point,
    [..., 2I] with I >= 1."""
    if x.ndim < 1 or not x.is_floating_point() or x.shape[-1] % 2 or x.shape[-1] == 0:
        raise ValueError(
            f"silu_and_mul_quant: x must be a floating-point tensor [..., 2 * intermediate] (gate then up, an even, "
            f"non-zero last dimension), got {x.dtype} {tuple(x.shape)}"
        )
    _check_fp8("silu_and_mul_quant", fp8)


def rms_norm_quant(x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [..., H], scale [..., 1] float32) of rms_norm(x, weight, eps) quantized per token (module docstring):
    int8 codes, or e4m3 when fp8."""
    check_rms_norm_quant(x, weight, fp8)
    return quantize_activation(rms_norm(x, weight, eps), quant_args(fp8))


def add_rms_norm_quant(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scale, h) with h = x + residual in x's dtype (add_rms_norm's new residual stream) and the codes and
    scales of rms_norm(h, weight, eps) quantized per token (module docstring)."""
    check_add_rms_norm_quant(x, residual, weight, fp8)
    h = x + residual
    codes, scale = quantize_activation(rms_norm(h, weight, eps), quant_args(fp8))
    return codes, scale, h


def silu_and_mul_quant(x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [..., I], scale [..., 1] float32) of silu_and_mul(x) (x [..., 2I]) quantized per token (module
    docstring): int8 codes, or e4m3 when fp8."""
    check_silu_and_mul_quant(x, fp8)
    return quantize_activation(silu_and_mul(x), quant_args(fp8))
