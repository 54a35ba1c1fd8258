"""Activation quantizers: dynamic per-token and static per-tensor, int8 and fp8 e4m3.

Symmetric only (as vLLM's W8A8 kernels): s = max|x| / qmax over a token (dynamic, computed on the fly)
or over all calibration tokens (static, stored in the artifact as `input_scale`); q = clamp(round(x/s)).
fp8: s = max|x| / 448, q = fp8(clamp(x / s)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from accel.quantization.weight_quant import FP8_DTYPE, FP8_MAX
from accel.schema import QuantizationProfile


@dataclass(frozen=True)
class ActivationQuantArgs:
    """How a linear layer's input is quantized at run time."""

    num_bits: int = 8
    type: Literal["int", "float"] = "int"
    strategy: Literal["token", "tensor"] = "token"
    dynamic: bool = True

    def __post_init__(self) -> None:
        if self.num_bits != 8:
            raise ValueError(f"activations are quantized to 8 bits (int8 or fp8), got {self.num_bits}")
        if not self.dynamic and self.strategy != "tensor":
            raise ValueError("static activation scales are per tensor; use strategy 'tensor' with dynamic=False")

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.type == "float" else 127.0

    @classmethod
    def from_profile(cls, profile: QuantizationProfile) -> ActivationQuantArgs | None:
        """None when the profile keeps activations in 16 bits."""
        if not profile.quantizes_activations:
            return None
        return cls(
            num_bits=profile.activation_bits,
            type=profile.activation_type,
            strategy=profile.activation_strategy if profile.activation_dynamic else "tensor",
            dynamic=profile.activation_dynamic,
        )


def activation_scale(x: torch.Tensor, args: ActivationQuantArgs) -> torch.Tensor:
    """s = max|x| / qmax per token ([..., 1]) or per tensor ([1])."""
    absmax = x.abs().amax(dim=-1, keepdim=True) if args.strategy == "token" else x.abs().amax().reshape(1)
    return torch.clamp(absmax.float(), min=1e-12) / args.qmax


def quantize_activation(
    x: torch.Tensor, args: ActivationQuantArgs, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, s): int8 or fp8 codes and the scale used (the static one when given)."""
    scale = static_scale.float() if static_scale is not None else activation_scale(x, args)
    scaled = x.float() / scale
    if args.type == "float":
        return torch.clamp(scaled, -FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale
    return torch.clamp(torch.round(scaled), -127, 127).to(torch.int8), scale


def fake_quantize_activation(
    x: torch.Tensor, args: ActivationQuantArgs, static_scale: torch.Tensor | None = None
) -> torch.Tensor:
    """x^ = q * s in x's dtype: what a W8A8 kernel computes with."""
    q, scale = quantize_activation(x, args, static_scale)
    return (q.float() * scale).to(x.dtype)
