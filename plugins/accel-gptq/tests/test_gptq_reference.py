"""The blocked Cholesky implementation against a textbook one: the same codes, the same weights, in float64.

The reference quantizes one column at a time with the explicit inverse Hessian of the columns not yet
quantized, F (Optimal Brain Quantization's update, in GPTQ's fixed column order):
    delta_F = -(w_i - q_i) / [H_F^-1]_ii * (H_F^-1)_{i,F}
    H_{F-i}^-1 = H_F^-1 - (H_F^-1)_{:,i} (H_F^-1)_{i,:} / [H_F^-1]_ii
No Cholesky factor, no blocks, no lazy updates.
"""

import pytest
import torch
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ

from accel.quantization import LinearStats, WeightQuantArgs, quantize
from accel.quantization.weight_quant import compute_qparams


def reference_gptq(
    weight: torch.Tensor, hessian: torch.Tensor, args: WeightQuantArgs, config: GPTQConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and dequantized weights [out, in], both in natural column order."""
    W, H = weight.double().clone(), hessian.double().clone()
    out_features, n = W.shape
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if config.act_order else torch.arange(n)
    g = args.group_size if args.strategy == "group" else n

    def grid(columns: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if args.strategy == "tensor":
            low, high = columns.min(), columns.max()
        else:
            low, high = columns.amin(dim=1), columns.amax(dim=1)
        scale, zero_point = compute_qparams(low, high, args)
        return scale, (torch.zeros_like(scale) if zero_point is None else zero_point.double())

    # Static grids: natural-order groups of the un-updated weight (whole rows or tensor when not grouped).
    static = [grid(W[:, start : start + g]) for start in range(0, n, g)]
    dynamic = args.strategy == "group" and not config.static_groups

    W, H = W[:, perm], H[perm][:, perm]
    H += config.dampening_frac * torch.diagonal(H).mean() * torch.eye(n, dtype=H.dtype)
    Hinv = torch.linalg.inv(H)
    codes = torch.zeros(out_features, n, dtype=torch.int8)
    used = torch.zeros(out_features, n, dtype=torch.float64)
    for i in range(n):
        if dynamic and i % g == 0:
            scale, zero_point = grid(W[:, i : i + g])
        elif not dynamic:
            scale, zero_point = static[int(perm[i]) // g]
        q = torch.clamp(torch.round(W[:, i] / scale) + zero_point, args.qmin, args.qmax)
        codes[:, i] = q.to(torch.int8)
        used[:, i] = (q - zero_point) * scale
        W[:, i:] -= torch.outer((W[:, i] - used[:, i]) / Hinv[i, i], Hinv[i, i:])
        Hinv -= torch.outer(Hinv[:, i], Hinv[i, :]) / Hinv[i, i]
    natural_codes, natural_used = torch.empty_like(codes), torch.empty_like(used)
    natural_codes[:, perm], natural_used[:, perm] = codes, used
    return natural_codes, natural_used


CASES = {
    "g32-block16-sym": (WeightQuantArgs(4, True, "group", 32), GPTQConfig(block_size=16), 96),
    "g32-block16-asym": (WeightQuantArgs(4, False, "group", 32), GPTQConfig(block_size=16), 96),
    # Groups start inside blocks and straddle block ends; the last group is partial (100 = 4 * 24 + 4).
    "g24-block16-asym-partial": (WeightQuantArgs(3, False, "group", 24), GPTQConfig(block_size=16), 100),
    "channel-block16-sym": (WeightQuantArgs(4, True, "channel"), GPTQConfig(block_size=16), 96),
    "tensor-block32-asym": (WeightQuantArgs(8, False, "tensor"), GPTQConfig(block_size=32), 96),
    "act-order-g32-asym": (WeightQuantArgs(4, False, "group", 32), GPTQConfig(block_size=16, act_order=True), 100),
    "act-order-static-g20-sym": (
        WeightQuantArgs(4, True, "group", 20), GPTQConfig(block_size=16, act_order=True, static_groups=True), 96
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_blocked_matches_textbook_reference(case):
    args, config, in_features = CASES[case]
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(16, in_features, generator=gen, dtype=torch.float64)
    channel_scales = torch.exp(torch.randn(in_features, generator=gen, dtype=torch.float64))
    inputs = (torch.randn(256, in_features, generator=gen, dtype=torch.float64) @
              torch.randn(in_features, in_features, generator=gen, dtype=torch.float64)) * channel_scales
    inputs[:, 5] = 0  # a dead input
    hessian = inputs.T @ inputs / len(inputs)

    qw = GPTQ(config).quantize_weight(weight, args, LinearStats(hessian=hessian))
    codes, used = reference_gptq(weight, hessian, args, config)

    assert not torch.equal(codes, quantize(weight, args).q), "the reference should differ from round-to-nearest"
    assert torch.equal(qw.q, codes)
    torch.testing.assert_close(qw.dequantize(torch.float64), used, rtol=1e-10, atol=1e-12)
