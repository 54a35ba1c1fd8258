"""Dead inputs, missing or unusable statistics, and the dampening retries."""

import logging

import pytest
import torch
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ, inverse_hessian_factor

from accel.quantization import LinearStats, WeightQuantArgs

ARGS = WeightQuantArgs(num_bits=4, symmetric=True, strategy="group", group_size=32)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize("act_order", [False, True], ids=["natural", "act-order"])
def test_dead_inputs_get_zero_weights(symmetric, act_order):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(256, 64, generator=gen)
    dead = [3, 17, 40]
    inputs[:, dead] = 0
    weight = torch.randn(16, 64, generator=gen)
    args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=32)

    qw = GPTQ(GPTQConfig(act_order=act_order)).quantize_weight(weight, args, LinearStats(hessian=inputs.T @ inputs))

    dequantized = qw.dequantize()
    assert torch.isfinite(dequantized).all()
    assert torch.equal(dequantized[:, dead], torch.zeros(16, 3))


def test_missing_statistics_raise():
    weight = torch.randn(8, 32)
    with pytest.raises(ValueError, match="stats=None"):
        GPTQ().quantize_weight(weight, ARGS, None)
    with pytest.raises(ValueError, match="stats.hessian"):
        GPTQ().quantize_weight(weight, ARGS, LinearStats(inputs=torch.randn(4, 32)))


def test_unusable_inputs_raise():
    weight = torch.randn(8, 32)
    with pytest.raises(ValueError, match="shape"):
        GPTQ().quantize_weight(weight, ARGS, LinearStats(hessian=torch.eye(16)))
    with pytest.raises(ValueError, match="non-finite"):
        GPTQ().quantize_weight(weight, ARGS, LinearStats(hessian=torch.full((32, 32), float("nan"))))
    with pytest.raises(ValueError, match="integer grids"):
        GPTQ().quantize_weight(weight, WeightQuantArgs(num_bits=8, type="float", strategy="channel"),
                               LinearStats(hessian=torch.eye(32)))


def test_dampening_is_retried_at_10x_on_a_singular_hessian(caplog):
    gen = torch.Generator().manual_seed(1)
    # 16 tokens for 64 inputs: H has rank 16. Accumulated rounding can leave such an H slightly indefinite;
    # here exaggerated so the configured dampening (0.01 * mean diag) is not enough but 10x is.
    inputs = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    hessian = inputs.T @ inputs / len(inputs)
    hessian -= 0.05 * torch.diagonal(hessian).mean() * torch.eye(64, dtype=torch.float64)
    mean_diag = torch.diagonal(hessian).mean()

    with caplog.at_level(logging.WARNING, logger="accel_gptq.gptq"):
        upper = inverse_hessian_factor(hessian, 0.01)
    assert "retrying with 0.1" in caplog.text
    expected = torch.linalg.inv(hessian + 0.1 * mean_diag * torch.eye(64, dtype=torch.float64))
    torch.testing.assert_close(upper.T @ upper, expected)

    weight = torch.randn(16, 64, generator=gen, dtype=torch.float64)
    qw = GPTQ().quantize_weight(weight, ARGS, LinearStats(hessian=hessian))
    assert torch.isfinite(qw.dequantize()).all()


def test_a_hessian_no_dampening_fixes_raises():
    # Eigenvalue -100 against a mean diagonal of 0.21: even 1000x the dampening (lambda = 2.1) cannot lift it.
    v = torch.full((128, 1), 128**-0.5, dtype=torch.float64)
    hessian = torch.eye(128, dtype=torch.float64) - 101 * v @ v.T
    with pytest.raises(ValueError, match="not positive definite"):
        GPTQ().quantize_weight(torch.randn(8, 128, dtype=torch.float64), ARGS, LinearStats(hessian=hessian))
