"""Activation quantizers and QuantLinear against their definitions."""

import pytest
import torch

from accel.quantization import WeightQuantArgs, quantize
from accel.quantization.activation_quant import (
    ActivationQuantArgs,
    fake_quantize_activation,
    quantize_activation,
)
from accel.quantization.qlinear import QuantLinear
from accel.schema import QuantizationProfile


def test_dynamic_per_token_int8_by_hand():
    x = torch.randn(4, 32, dtype=torch.float64)
    q, s = quantize_activation(x, ActivationQuantArgs())
    for t in range(4):
        scale = float(x[t].abs().max()) / 127
        assert float(s[t]) == pytest.approx(scale, rel=1e-6)
        expected = torch.clamp(torch.round(x[t] / scale), -127, 127)
        assert torch.equal(q[t].double(), expected)
    assert (fake_quantize_activation(x, ActivationQuantArgs()) - x).abs().max() <= s.max() / 2 + 1e-9


def test_static_per_tensor_uses_the_given_scale_and_clips():
    x = torch.tensor([[0.5, -2.0, 4.0]])
    args = ActivationQuantArgs(strategy="tensor", dynamic=False)
    q, s = quantize_activation(x, args, static_scale=torch.tensor([1.0 / 127]))
    assert q.tolist() == [[64, -127, 127]]  # 4.0 and -2.0 clip at the calibrated range of 1.0
    assert float(s) == pytest.approx(1 / 127)


def test_fp8_activations():
    x = torch.randn(3, 16)
    q, s = quantize_activation(x, ActivationQuantArgs(type="float"))
    assert q.dtype == torch.float8_e4m3fn
    assert torch.allclose(s.squeeze(), x.abs().amax(dim=-1) / 448)
    assert (fake_quantize_activation(x, ActivationQuantArgs(type="float")) - x).abs().max() < 0.07 * x.abs().max()


def test_from_profile():
    assert ActivationQuantArgs.from_profile(QuantizationProfile()) is None
    w8a8 = QuantizationProfile(weight_bits=8, activation_bits=8, method="smooth_quant", activation_dynamic=False)
    assert ActivationQuantArgs.from_profile(w8a8) == ActivationQuantArgs(strategy="tensor", dynamic=False)
    with pytest.raises(ValueError, match="static activation scales are per tensor"):
        ActivationQuantArgs(strategy="token", dynamic=False)


def test_quant_linear_matches_its_definition():
    linear = torch.nn.Linear(96, 40, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, group_size=32)
    qw = quantize(linear.weight.data, args)
    module = QuantLinear(qw, linear.bias.data, ActivationQuantArgs())
    x = torch.randn(5, 96, dtype=torch.float64)
    expected = fake_quantize_activation(x, ActivationQuantArgs()) @ qw.dequantize(torch.float64).T + linear.bias
    torch.testing.assert_close(module(x), expected)
    assert "int4-asym g32, act=int8" in repr(module)
