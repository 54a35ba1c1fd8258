"""QuantLinear: a linear layer that holds quantized weights (and optionally quantizes its input).

It replaces nn.Linear after quantization. Its forward is the portable reference (dequantize, then
matmul); the runtime swaps in device kernels. Artifacts are written from and loaded into these modules.
"""

from __future__ import annotations

import torch
from torch import nn

from accel.quantization.activation_quant import ActivationQuantArgs, fake_quantize_activation
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs, dequantize


class QuantLinear(nn.Module):
    """y = Q_a(x) @ W^T + b, W = (q - zp) * s; Q_a is the identity unless activations are quantized."""

    def __init__(
        self,
        qweight: QuantizedWeight,
        bias: torch.Tensor | None = None,
        act_args: ActivationQuantArgs | None = None,
        input_scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.out_features, self.in_features = qweight.q.shape
        self.weight_args: WeightQuantArgs = qweight.args
        self.act_args = act_args
        self.register_buffer("weight_q", qweight.q)
        self.register_buffer("weight_scale", qweight.scale)
        self.register_buffer("weight_zero_point", qweight.zero_point)
        self.register_buffer("weight_g_idx", qweight.g_idx)
        self.register_buffer("bias", bias)
        self.register_buffer("input_scale", input_scale)

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(
            q=self.weight_q, scale=self.weight_scale, zero_point=self.weight_zero_point,
            args=self.weight_args, g_idx=self.weight_g_idx,
        )

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight_q, self.weight_scale, self.weight_zero_point, self.weight_args, dtype,
                          self.weight_g_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_args is not None:
            static = None if self.act_args.dynamic else self.input_scale
            x = fake_quantize_activation(x, self.act_args, static)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        w = self.weight_args
        kind = "fp8" if w.is_fp8 else f"int{w.num_bits}{'' if w.symmetric else '-asym'}"
        group = f"g{w.group_size}" if w.strategy == "group" else w.strategy
        act = "" if self.act_args is None else f", act={self.act_args.type}{self.act_args.num_bits}"
        return f"in={self.in_features}, out={self.out_features}, weight={kind} {group}{act}"
