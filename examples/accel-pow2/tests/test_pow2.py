"""The example plugin's own tests: accel's conformance kit, plus what is special about pow2."""

import math

import torch
from accel_pow2.method import Pow2Config, Pow2RTN

from accel.quantization import WeightQuantArgs, quantize
from accel.testing import parametrize_with_checks, records_of


@parametrize_with_checks(records_of("accel-pow2"))
def test_conformance(record, check):
    check(record)


def test_scales_are_powers_of_two_and_never_smaller_than_rtn():
    weight = torch.randn(32, 96, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    args = WeightQuantArgs(num_bits=4, symmetric=True, strategy="group", group_size=32)
    qw = Pow2RTN(Pow2Config()).quantize_weight(weight, args)
    exponents = torch.log2(qw.scale)
    assert torch.equal(exponents, exponents.round())
    assert (qw.scale >= quantize(weight, args).scale).all()
    # Rounding up never clips: every weight is within half a step of its grid point.
    step = qw.scale.repeat_interleave(32, dim=1)
    assert ((qw.dequantize(torch.float64) - weight).abs() <= step / 2 + 1e-12).all()
    assert math.isclose(float(qw.scale.max().log2() % 1), 0.0)
