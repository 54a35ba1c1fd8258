"""act_order: static groups keep the natural group layout; dynamic groups carry a g_idx that dequantize uses."""

import torch
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ

from accel.quantization import LinearStats, WeightQuantArgs, quantize
from accel.quantization.weight_quant import quantize_with_qparams


def calibration(in_features: int, gen: torch.Generator) -> LinearStats:
    # Input channels whose energy spans two orders of magnitude, in random order.
    order = torch.randperm(in_features, generator=gen)
    channel_scales = 10 ** torch.linspace(-1, 1, in_features, dtype=torch.float64)[order]
    inputs = torch.randn(256, in_features, generator=gen, dtype=torch.float64) * channel_scales
    return LinearStats(hessian=inputs.T @ inputs / len(inputs))


def test_static_groups_keep_natural_order_and_no_g_idx():
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(24, 100, generator=gen, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=32)

    qw = GPTQ(GPTQConfig(act_order=True, static_groups=True)).quantize_weight(weight, args, calibration(100, gen))

    assert qw.g_idx is None
    # Every group's grid comes from the un-updated weight in natural column order: RTN's grid.
    rtn = quantize(weight, args)
    assert torch.equal(qw.scale, rtn.scale) and torch.equal(qw.zero_point, rtn.zero_point)
    assert not torch.equal(qw.q, rtn.q)


def test_dynamic_groups_give_a_valid_g_idx_that_dequantize_follows():
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(24, 100, generator=gen, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=32)

    qw = GPTQ(GPTQConfig(act_order=True, block_size=16)).quantize_weight(weight, args, calibration(100, gen))

    g_idx = qw.g_idx
    assert g_idx is not None and g_idx.dtype == torch.int32 and g_idx.shape == (100,)
    # Three full groups and one partial one (100 = 3 * 32 + 4), and the columns are not in natural order.
    assert torch.bincount(g_idx.long()).tolist() == [32, 32, 32, 4]
    assert not torch.equal(g_idx.long(), torch.arange(100) // 32)
    assert qw.scale.shape == (24, 4) and qw.zero_point.shape == (24, 4)

    dequantized = qw.dequantize(torch.float64)
    for group in range(4):
        columns = g_idx == group
        expected = (qw.q[:, columns].double() - qw.zero_point[:, group : group + 1]) * qw.scale[:, group : group + 1]
        assert torch.equal(dequantized[:, columns], expected)
    # The dequantized weight lies on the grid: quantizing it again gives the same codes.
    assert torch.equal(quantize_with_qparams(dequantized, qw.scale, qw.zero_point, args, g_idx), qw.q)


def test_without_act_order_no_g_idx():
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, strategy="group", group_size=32)
    assert GPTQ(GPTQConfig()).quantize_weight(weight, args, calibration(64, gen)).g_idx is None
    channel = WeightQuantArgs(num_bits=4, strategy="channel")
    assert GPTQ(GPTQConfig(act_order=True)).quantize_weight(weight, channel, calibration(64, gen)).g_idx is None
