"""Prune then quantize: with a sparsity mask (LinearStats.keep) GPTQ gives dropped weights the zero code, so they
dequantize to exactly 0, and compensates the zeroing, which beats zeroing GPTQ's codes afterwards."""

import pytest
import torch
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ

from accel.quantization import LinearStats, WeightQuantArgs
from accel.quantization.weight_quant import zero_dropped


def pruned_problem(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs = torch.randn(512, 64, generator=gen) @ torch.randn(64, 64, generator=gen)
    weight = torch.randn(32, 64, generator=gen)
    keep = torch.zeros(32, 16, 4, dtype=torch.bool)
    keep.scatter_(2, weight.abs().view(32, 16, 4).topk(2, dim=2).indices, True)  # 2:4 by magnitude
    keep = keep.view(32, 64)
    return weight * keep, keep, inputs


@pytest.mark.parametrize("config", [GPTQConfig(), GPTQConfig(act_order=True, static_groups=True),
                                    GPTQConfig(act_order=True)], ids=["plain", "act-order-static", "act-order"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_dropped_weights_stay_zero(config, symmetric):
    weight, keep, inputs = pruned_problem(0)
    args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=16)
    stats = LinearStats(hessian=inputs.T @ inputs / len(inputs), keep=keep)
    qw = GPTQ(config).quantize_weight(weight, args, stats)
    assert (qw.dequantize(torch.float32)[~keep] == 0).all()
    _, changed = zero_dropped(qw, keep)
    assert changed == 0


def test_compensating_the_mask_beats_zeroing_afterwards():
    weight, keep, inputs = pruned_problem(1)
    args = WeightQuantArgs(num_bits=4, strategy="group", group_size=16)
    hessian = inputs.T @ inputs / len(inputs)
    with_mask = GPTQ().quantize_weight(weight, args, LinearStats(hessian=hessian, keep=keep))
    zeroed_after, changed = zero_dropped(GPTQ().quantize_weight(weight, args, LinearStats(hessian=hessian)), keep)
    assert changed > 0  # without the mask GPTQ's updates move the dropped weights off zero

    def error(qw) -> float:
        return float(((weight - qw.dequantize(torch.float32)) @ inputs.T).norm())

    assert error(with_mask) < error(zeroed_after)


def test_a_mask_of_the_wrong_shape_is_refused():
    weight, keep, inputs = pruned_problem(2)
    with pytest.raises(ValueError, match="stats.keep has shape"):
        GPTQ().quantize_weight(weight, WeightQuantArgs(group_size=16),
                               LinearStats(hessian=inputs.T @ inputs, keep=keep[:, :8]))
