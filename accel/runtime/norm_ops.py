"""RMSNorm as a kernel op: the portable reference of `rms_norm`, the decoder's normalization.

    rms_norm(x, w, eps) = w * (x / sqrt(mean(x^2) + eps))        over the last dimension

computed as transformers' LlamaRMSNorm does: x in float32, the mean of squares and rsqrt in float32, the
normalized row cast back to x's dtype, and only then multiplied by the weight (the product's dtype is torch's
promotion of w's and x's: bf16 * bf16 stays bf16). A Llama-3-8B forward runs it 65 times (before attention and
MLP in each of 32 layers, and once before lm_head). In eager torch that is ~7 kernels each (cast, pow, mean,
add, rsqrt, mul, cast, mul): launch-bound at decode, so a backend fuses it into one kernel (op "rms_norm",
declared in ops.OPS).

add_rms_norm(x, residual, w, eps) = (rms_norm(h, w, eps), h) with h = x + residual

is the decoder's residual add fused with the norm that follows it (op "add_rms_norm", vLLM's fused_add_rms_norm,
here functional: both results are new tensors): h in x's dtype as torch adds (the float32 sum rounded once), then
normalized exactly as rms_norm does. h is the new residual stream, so a kernel must produce it bit for bit.
"""

from __future__ import annotations

import torch

__all__ = ["add_rms_norm", "check_add_rms_norm", "check_rms_norm", "rms_norm"]


def check_rms_norm(x: torch.Tensor, weight: torch.Tensor) -> None:
    """A ValueError naming what is wrong when x [..., H] and weight [H] do not fit rms_norm's contract."""
    if x.ndim < 1 or not x.is_floating_point():
        raise ValueError(f"rms_norm: x must be a floating-point tensor [..., hidden], got {x.dtype} {tuple(x.shape)}")
    if weight.ndim != 1 or weight.shape[0] != x.shape[-1] or not weight.is_floating_point():
        raise ValueError(
            f"rms_norm: weight {weight.dtype} {tuple(weight.shape)} must be a floating-point [hidden] with hidden = "
            f"x's last dimension {x.shape[-1]}"
        )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * (x / sqrt(mean(x^2) + eps)) over x's last dimension (module docstring): x [..., H] in any float
    dtype, weight [H]; the same shape as x, in torch's promotion of weight's and x's dtypes.

    The exact expression of the runtime's former RMSNorm.forward (and transformers'), so on the CPU a model
    computes the same bits through the op as it did inline."""
    check_rms_norm(x, weight)
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def check_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor) -> None:
    """A ValueError naming what is wrong when x, residual [..., H] and weight [H] do not fit add_rms_norm's
    contract (x and residual of one shape and dtype; then rms_norm's)."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(
            f"add_rms_norm: residual {residual.dtype} {tuple(residual.shape)} must have x's shape and dtype, "
            f"{x.dtype} {tuple(x.shape)}"
        )
    check_rms_norm(x, weight)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(h, weight, eps), h) with h = x + residual (module docstring): x and residual [..., H] of one float
    dtype, weight [H]; h in x's dtype, the normalized h in torch's promotion of weight's and x's dtypes.

    The decoder's `h = x + attn(norm(x))` followed by `norm(h)`, in the same expressions, so the op computes the
    same bits as the separate add and rms_norm."""
    check_add_rms_norm(x, residual, weight)
    h = x + residual
    return rms_norm(h, weight, eps), h
