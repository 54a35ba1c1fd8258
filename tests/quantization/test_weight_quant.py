"""Integer quantizers against a float64 loop over groups written straight from the definitions."""

import math

import pytest
import torch

from accel.quantization import WeightQuantArgs, dequantize, quantize
from accel.quantization.kernels.reference import dequant_linear
from accel.quantization.weight_quant import fake_quantize, zero_dropped


def reference_group(values: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, float, int]:
    """One group by the book (compressed-tensors' definitions), element by element in float64."""
    qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    lo, hi = min(float(values.min()), 0.0), max(float(values.max()), 0.0)
    if symmetric:
        scale, zp = max(abs(lo), abs(hi)) / ((qmax - qmin) / 2), 0
    else:
        scale = (hi - lo) / (qmax - qmin)
        zp = int(min(max(qmin - round(lo / scale), qmin), qmax))
    codes = torch.tensor([min(max(round(float(v) / scale) + zp, qmin), qmax) for v in values])
    return codes, scale, zp


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(("strategy", "group_size"), [("group", 32), ("group", 128), ("channel", -1), ("tensor", -1)])
def test_matches_float64_definition(bits, symmetric, strategy, group_size):
    gen = torch.Generator().manual_seed(bits * 7 + symmetric)
    weight = torch.randn(6, 200, generator=gen, dtype=torch.float64)  # 200 = 128 + 72: a partial group
    args = WeightQuantArgs(num_bits=bits, symmetric=symmetric, strategy=strategy, group_size=max(group_size, 1))
    qw = quantize(weight, args)
    width = {"group": group_size, "channel": 200, "tensor": 200 * 6}[strategy]
    flat_rows = weight.reshape(1, -1) if strategy == "tensor" else weight
    q_rows = qw.q.reshape(1, -1) if strategy == "tensor" else qw.q
    for r in range(flat_rows.shape[0]):
        for g in range(math.ceil(flat_rows.shape[1] / width)):
            chunk = flat_rows[r, g * width : (g + 1) * width]
            codes, scale, zp = reference_group(chunk, bits, symmetric)
            assert torch.equal(q_rows[r, g * width : (g + 1) * width].long(), codes.long())
            assert float(qw.scale[r, g]) == pytest.approx(scale, rel=1e-12)
            if not symmetric:
                assert int(qw.zero_point[r, g]) == zp


def test_partial_last_group_layout():
    weight = torch.randn(4, 576, dtype=torch.float64)  # SmolLM2's hidden size
    qw = quantize(weight, WeightQuantArgs(num_bits=4, group_size=128))
    assert qw.scale.shape == (4, 5)  # ceil(576 / 128): four full groups and one of 64


def test_rtn_error_is_at_most_half_a_step():
    weight = torch.randn(16, 96, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, group_size=32)
    qw = quantize(weight, args)
    step = qw.scale.repeat_interleave(32, dim=1)
    assert ((qw.dequantize(torch.float64) - weight).abs() <= step / 2 + 1e-12).all()


def test_zero_rows_do_not_divide_by_zero():
    qw = quantize(torch.zeros(2, 64), WeightQuantArgs(num_bits=4, symmetric=False, group_size=32))
    assert torch.isfinite(qw.scale).all() and (qw.dequantize() == 0).all()


def test_dequant_linear_matches_dense_matmul():
    weight = torch.randn(24, 80, dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, group_size=32)
    qw = quantize(weight, args)
    x = torch.randn(5, 80, dtype=torch.float64)
    expected = x @ fake_quantize(weight, args).T
    got = dequant_linear(x, qw.q, qw.scale, qw.zero_point, 32)
    torch.testing.assert_close(got, expected)
    assert torch.equal(dequantize(qw.q, qw.scale, qw.zero_point, args, torch.float64), qw.dequantize(torch.float64))


def test_bad_args():
    with pytest.raises(ValueError, match="num_bits must be 2..8"):
        WeightQuantArgs(num_bits=16)
    with pytest.raises(ValueError, match="group_size > 0"):
        WeightQuantArgs(strategy="group", group_size=0)
    with pytest.raises(ValueError, match="2-D weight"):
        quantize(torch.randn(3), WeightQuantArgs())


@pytest.mark.parametrize(
    "args",
    [WeightQuantArgs(num_bits=4, group_size=16), WeightQuantArgs(num_bits=4, symmetric=False, group_size=16),
     WeightQuantArgs(num_bits=8, strategy="channel", type="float")],
    ids=["sym", "asym", "fp8"],
)
def test_zero_dropped_gives_dropped_weights_the_zero_code(args):
    weight = torch.randn(8, 32, dtype=torch.float32)
    keep = torch.rand(8, 32) > 0.5
    qw = quantize(weight + 0.01, args)  # every code non-zero-ish: dropped weights need changing
    fixed, changed = zero_dropped(qw, keep)
    assert changed > 0
    dense = fixed.dequantize(torch.float32)
    assert (dense[~keep] == 0).all()
    assert torch.equal(dense[keep], qw.dequantize(torch.float32)[keep])
    assert zero_dropped(fixed, keep)[1] == 0
    # Quantizing weights that are already zero keeps them zero (RTN maps 0 to the zero code).
    assert zero_dropped(quantize(weight * keep, args), keep)[1] == 0
