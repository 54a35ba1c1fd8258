"""RMSNorm folded into the W4A16 linears around it: the portable references of `w4a16_linear_residual` and
`w4a16_linear_rms`.

At batch 1 a Llama-3-8B decode step runs 65 RMSNorm launches (each fused with the residual add before it,
add_rms_norm), ~1.9 us apiece on an H200 and ~6% of the W4A16 step. Every one sits between two W4A16 linears (o ->
norm -> gate/up, down -> norm -> q/k/v, the last down -> norm -> lm_head), and RMSNorm splits into an elementwise
part and one scalar per row:

    rms_norm(h, w, eps) @ W^T  =  r * ((h * w) @ W^T),      r = 1 / sqrt(mean(h^2) + eps)   per row of h

so the linear before the norm finishes the elementwise part in its epilogue, and the linear after it applies r:

    w4a16_linear_residual(x, W.., residual, w)  = (h, h * w),    h = x @ W^T + residual
    w4a16_linear_rms(xw, W.., h, eps)           = r(h) * (xw @ W^T)

h is the new residual stream, rounded as add_rms_norm rounds it (x @ W^T in x's dtype, then torch's sum rounded once);
h * w is rounded once to x's dtype (the float32 product). The second op reads h only for r: a kernel sums h's
squares while the linear streams its weights, so no launch is left for the norm. Against the unfused pair
(w4a16_linear, then add_rms_norm, then w4a16_linear) the rounding points move: the unfused norm rounds h * r to x's
dtype and multiplies by w in x's dtype; the fold rounds h * w once and multiplies by r in float32 (in bf16 both are
within a few 2^-8 relative of the float64 value, as the linear's own tolerance allows).
"""

from __future__ import annotations

import torch

from accel.runtime.norm_ops import check_rms_norm

__all__ = ["check_linear_residual", "check_linear_rms", "rms_scale", "w4a16_linear_residual", "w4a16_linear_rms"]


def rms_scale(h: torch.Tensor, eps: float) -> torch.Tensor:
    """r = 1 / sqrt(mean(h^2) + eps) per row of h [..., H], in float32 [..., 1]: RMSNorm's scalar (norm_ops)."""
    hf = h.to(torch.float32)
    return torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)


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


def check_linear_rms(x: torch.Tensor, h: torch.Tensor, eps: float) -> None:
    """A ValueError naming what is wrong when h (the stream whose norm x already carries the weight of) does not
    fit x [..., K], or eps is not a positive float."""
    if h.shape != x.shape:
        raise ValueError(
            f"w4a16_linear_rms: h {tuple(h.shape)} must have x's shape {tuple(x.shape)} (x = h * norm weight)"
        )
    check_rms_norm(h, torch.empty(h.shape[-1], dtype=h.dtype, device="meta"))
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, h * norm_weight) with h = w4a16_linear(x, ...) + residual (module docstring): x [..., K], residual
    [..., N] in x's dtype, norm_weight [N] (the next RMSNorm's weight); both results [..., N] in x's dtype."""
    from accel.runtime.ops import w4a16_linear  # ops declares this op, so import its linear lazily

    y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size)
    check_linear_residual(y.shape, x.dtype, residual, norm_weight)
    h = y + residual
    return h, (h.to(torch.float32) * norm_weight.to(torch.float32)).to(x.dtype)


def w4a16_linear_rms(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    h: torch.Tensor,
    eps: float,
) -> torch.Tensor:
    """r(h) * (x @ W^T) with x = h * norm weight (w4a16_linear_residual's second result) and r(h) = 1 / sqrt(mean(
    h^2) + eps) per row: rms_norm(h) @ W^T with the norm folded in. The product and r in float32, cast once to x's
    dtype."""
    from accel.runtime.ops import w4a16_weight

    check_linear_rms(x, h, eps)
    weight = w4a16_weight(x.shape[-1], weight_packed, weight_scale, weight_zero_point, group_size)
    y = torch.nn.functional.linear(x.to(torch.float32), weight) * rms_scale(h, eps)
    return y.to(x.dtype)
