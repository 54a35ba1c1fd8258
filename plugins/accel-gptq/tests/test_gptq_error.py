"""The paper's claim: on correlated inputs GPTQ's layer output error ||W X^T - Q X^T||_F is below RTN's."""

import pytest
import torch
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ

from accel.quantization import LinearStats, WeightQuantArgs, quantize


def correlated_inputs(tokens: int, in_features: int, gen: torch.Generator) -> torch.Tensor:
    """X = Z A: random mixing A makes the Hessian X^T X / N far from diagonal."""
    return torch.randn(tokens, in_features, generator=gen) @ torch.randn(in_features, in_features, generator=gen)


def output_error(weight: torch.Tensor, quantized: torch.Tensor, inputs: torch.Tensor) -> float:
    return float(((weight.double() - quantized.double()) @ inputs.double().T).norm())


GRIDS = {
    "w4-g32": dict(num_bits=4, strategy="group", group_size=32),
    "w3-g32": dict(num_bits=3, strategy="group", group_size=32),
    "w4-channel": dict(num_bits=4, strategy="channel"),
    "w3-channel": dict(num_bits=3, strategy="channel"),
}


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("grid", GRIDS)
def test_gptq_output_error_below_rtn(grid, symmetric):
    gen = torch.Generator().manual_seed(0)
    inputs = correlated_inputs(512, 128, gen)
    weight = torch.randn(64, 128, generator=gen)
    args = WeightQuantArgs(symmetric=symmetric, **GRIDS[grid])

    gptq = GPTQ(GPTQConfig()).quantize_weight(weight, args, LinearStats(hessian=inputs.T @ inputs / len(inputs)))
    gptq_error = output_error(weight, gptq.dequantize(), inputs)
    rtn_error = output_error(weight, quantize(weight, args).dequantize(), inputs)

    print(f"{grid} {'sym' if symmetric else 'asym'}: GPTQ / RTN output error = {gptq_error / rtn_error:.3f}")
    assert gptq_error < rtn_error


@pytest.mark.parametrize("grid", ["w4-g32", "w3-channel"])
def test_act_order_is_not_worse_on_a_strongly_varying_diagonal(grid):
    gen = torch.Generator().manual_seed(1)
    # Input channels whose energy spans three orders of magnitude, in random order.
    channel_scales = 10 ** torch.linspace(-1.5, 1.5, 128)[torch.randperm(128, generator=gen)]
    inputs = correlated_inputs(512, 128, gen) * channel_scales
    weight = torch.randn(64, 128, generator=gen)
    args = WeightQuantArgs(symmetric=False, **GRIDS[grid])
    stats = LinearStats(hessian=inputs.T @ inputs / len(inputs))

    plain = GPTQ(GPTQConfig()).quantize_weight(weight, args, stats)
    ordered = GPTQ(GPTQConfig(act_order=True)).quantize_weight(weight, args, stats)
    ratio = output_error(weight, ordered.dequantize(), inputs) / output_error(weight, plain.dequantize(), inputs)

    print(f"{grid}: act_order / natural order output error = {ratio:.3f}")
    assert ratio <= 1.05
