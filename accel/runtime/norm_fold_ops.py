"""RMSNorm (and SwiGLU) folded into the W4A16 linears around it: the portable references of `w4a16_linear_residual`,
`w4a16_linear_rms` and `w4a16_linear_silu_mul`.

At batch 1 a Llama-3-8B decode step runs 65 RMSNorm launches (each fused with the residual add before it,
add_rms_norm), ~1.9 us apiece on an H200 and ~6% of the W4A16 step. Every one sits between two W4A16 linears (o ->
norm -> gate/up, down -> norm -> q/k/v, the last down -> norm -> lm_head), and RMSNorm splits into an elementwise
part and one scalar per row:

    rms_norm(h, w, eps) @ W^T  =  r * ((h * w) @ W^T),      r = 1 / sqrt(mean(h^2) + eps)   per row of h

so the linear before the norm finishes the elementwise part in its epilogue, and the linear after it applies r:

    w4a16_linear_residual(x, W.., residual, w)   = (h, h * w, ss),   h = x @ W^T + residual
    w4a16_linear_rms(xw, W.., ss, eps)           = r * (xw @ W^T),   r = 1 / sqrt(sum(ss) / K + eps)

ss holds h's sum of squares per row as float32 partial sums [..., P] (P >= 1 is the producer's choice: a kernel
writes one per program over its rows; the reference P = 1), so the next linear reads P floats per row, not h. h is the
new residual stream, rounded as add_rms_norm rounds it (x @ W^T in x's dtype, then torch's sum rounded once); h * w
is rounded once to x's dtype (the float32 product); ss is of h as rounded. Against the unfused pair (w4a16_linear,
add_rms_norm, w4a16_linear) the rounding points move: the unfused norm rounds h * r to x's dtype and multiplies by w
in x's dtype; the fold rounds h * w once and multiplies by r in float32 (in bf16 both are within a few 2^-8 relative
of the float64 value, as the linear's own tolerance allows).

SwiGLU's silu(gate) * up (act_ops.silu_and_mul, 32 launches a batch-1 step) folds the same way into the stacked
gate/up linear before it: `w4a16_linear_silu_mul(x, W.., ss, eps) = silu_and_mul(y)` with y = x @ W^T (or, given
ss, w4a16_linear_rms's r * (x @ W^T)) rounded to x's dtype first, as the unfused pair reads it.
"""

from __future__ import annotations

import torch

__all__ = [
    "check_linear_residual",
    "check_linear_rms",
    "rms_scale",
    "sum_of_squares",
    "w4a16_linear_residual",
    "w4a16_linear_rms",
    "w4a16_linear_silu_mul",
]


def sum_of_squares(h: torch.Tensor) -> torch.Tensor:
    """sum(h^2) per row of h [..., H] in float32, [..., 1]: the partial sums ss of the reference (P = 1)."""
    return h.to(torch.float32).pow(2).sum(-1, keepdim=True)


def rms_scale(ss: torch.Tensor, k: int, eps: float) -> torch.Tensor:
    """r = 1 / sqrt(sum(ss) / k + eps) per row, float32 [..., 1], from partial sums of squares ss [..., P] of rows of
    length k: RMSNorm's scalar (norm_ops), mean(h^2) = sum(h^2) / k."""
    return torch.rsqrt(ss.to(torch.float32).sum(-1, keepdim=True) / k + eps)


def check_linear_residual(
    y_shape: torch.Size, dtype: torch.dtype, residual: torch.Tensor, weight: torch.Tensor
) -> None:
    """A ValueError naming what is wrong when the residual and the next norm's weight do not fit a linear's output
    [..., N] of `dtype`."""
    if residual.shape != y_shape or residual.dtype != dtype:
        raise ValueError(
            f"w4a16_linear_residual: residual {residual.dtype} {tuple(residual.shape)} must have the linear's output "
            f"shape and x's dtype, {dtype} {tuple(y_shape)}"
        )
    if weight.ndim != 1 or weight.shape[0] != y_shape[-1] or not weight.is_floating_point():
        raise ValueError(
            f"w4a16_linear_residual: norm_weight {weight.dtype} {tuple(weight.shape)} must be a floating-point "
            f"[{y_shape[-1]}] (the next RMSNorm's weight, one per output feature)"
        )


def check_linear_rms(x: torch.Tensor, ss: torch.Tensor, eps: float) -> None:
    """A ValueError naming what is wrong when ss (partial sums of squares of the stream x carries the norm weight of)
    does not fit x [..., K], or eps is not a positive float."""
    if ss.dtype != torch.float32 or ss.ndim != x.ndim or ss.shape[:-1] != x.shape[:-1] or ss.shape[-1] < 1:
        raise ValueError(
            f"w4a16_linear_rms: ss {ss.dtype} {tuple(ss.shape)} must be float32 [..., P >= 1] with x's leading "
            f"dimensions {tuple(x.shape[:-1])} (partial sums of h^2 per row, from w4a16_linear_residual)"
        )
    if not isinstance(eps, float) or eps <= 0:
        raise ValueError(f"w4a16_linear_rms: eps must be a positive float (the norm's epsilon), got {eps!r}")


def w4a16_linear_residual(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, h * norm_weight, ss) with h = w4a16_linear(x, ...) + residual and ss = sum(h^2) per row (module docstring):
    x [..., K], residual [..., N] in x's dtype, norm_weight [N] (the next RMSNorm's weight); h and h * norm_weight
    [..., N] in x's dtype, ss float32 [..., 1]."""
    from accel.runtime.ops import w4a16_linear  # ops declares this op, so import its linear lazily

    y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size)
    check_linear_residual(y.shape, x.dtype, residual, norm_weight)
    h = y + residual
    return h, (h.to(torch.float32) * norm_weight.to(torch.float32)).to(x.dtype), sum_of_squares(h)


def w4a16_linear_rms(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """r * (x @ W^T) with x = h * norm weight and ss the partial sums of h^2 (w4a16_linear_residual's second and third
    results), r = 1 / sqrt(sum(ss) / K + eps) per row: rms_norm(h) @ W^T with the norm folded in. The product and r
    in float32, cast once to x's dtype."""
    from accel.runtime.ops import w4a16_weight

    check_linear_rms(x, ss, eps)
    k = x.shape[-1]
    weight = w4a16_weight(k, weight_packed, weight_scale, weight_zero_point, group_size)
    y = torch.nn.functional.linear(x.to(torch.float32), weight) * rms_scale(ss, k, eps)
    return y.to(x.dtype)


def w4a16_linear_silu_mul(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """silu_and_mul(y) [..., N / 2] with y = x @ W^T [..., N] (the stacked gate | up linear), or with ss given
    w4a16_linear_rms(x, ..., ss, eps): SwiGLU (and the norm before it) folded into the linear (module docstring)."""
    from accel.runtime.act_ops import silu_and_mul
    from accel.runtime.ops import w4a16_linear

    if ss is None:
        y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size)
    else:
        y = w4a16_linear_rms(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps)
    return silu_and_mul(y)
