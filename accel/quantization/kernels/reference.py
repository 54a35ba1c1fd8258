"""Portable PyTorch reference kernels for quantized layers: the ground truth every backend is checked against."""

from __future__ import annotations

import torch

from accel.quantization.weight_quant import WeightQuantArgs, dequantize


def dequant_linear(
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    group_size: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ b) with W = (q - zp) * s dequantized in x's dtype.

    x: [..., in]; q: int8 codes [out, in]; scale/zero_point: [out, groups] (group_size > 0) or [out, 1]
    (group_size == -1, per channel). Bit width does not matter here: codes are already unpacked.
    """
    strategy = "group" if group_size > 0 else "channel"
    args = WeightQuantArgs(num_bits=8, strategy=strategy, group_size=max(group_size, 1))
    weight = dequantize(q, scale, zero_point, args, dtype=x.dtype)  # [out, in]
    return torch.nn.functional.linear(x, weight, bias)
