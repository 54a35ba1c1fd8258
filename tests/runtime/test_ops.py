"""The w4a16_linear reference against a float64 computation from the unpacked codes."""

from __future__ import annotations

import math

import pytest
import torch

from accel.quantization.kernels.reference import dequant_linear
from accel.runtime.ops import OPS, w4a16_linear
from accel.runtime.packing import pack_int32

# Relative error bound of the output, ||got - expected|| / ||expected||: float32 arithmetic lands far under 1e-5;
# the bf16 / fp16 output rounding alone is about 2^-9 / 2^-12 relative.
BOUND = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}


def make_case(m: int, n: int, k: int, group: int, symmetric: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    groups = math.ceil(k / group) if group > 0 else 1
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen) * 0.05 + 0.01).to(dtype)
    zero_point = None if symmetric else torch.randint(-8, 8, (n, groups), generator=gen, dtype=torch.int8)
    x = torch.randn(m, k, generator=gen).to(dtype)
    return x, q, scale, zero_point


def expected_float64(x, q, scale, zero_point, group):
    k = q.shape[1]
    cols = torch.arange(k) // (group if group > 0 else k)
    weight = q.double()
    if zero_point is not None:
        weight = weight - zero_point.double()[:, cols]
    weight = weight * scale.double()[:, cols]
    return x.double() @ weight.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [(1, 16, 64, 32), (3, 72, 200, 64), (5, 33, 256, 128), (2, 8, 96, -1), (4, 40, 136, 48)],
)
def test_reference_matches_float64(m, n, k, group, symmetric, dtype):
    x, q, scale, zero_point = make_case(m, n, k, group, symmetric, dtype, seed=m * 1000 + k)
    got = w4a16_linear(x, pack_int32(q, 4), scale, zero_point, group)
    expected = expected_float64(x, q, scale, zero_point, group)
    assert got.dtype == dtype and got.shape == (m, n)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def test_reference_keeps_leading_dims_and_matches_dequant_linear():
    x, q, scale, zero_point = make_case(6, 24, 160, 32, False, torch.float32, seed=7)
    got = w4a16_linear(x.reshape(2, 3, 160), pack_int32(q, 4), scale, zero_point, 32)
    assert got.shape == (2, 3, 24)
    torch.testing.assert_close(got.reshape(6, 24), dequant_linear(x, q, scale, zero_point, 32))


def test_reference_rejects_mismatched_shapes():
    x, q, scale, zero_point = make_case(2, 16, 64, 32, True, torch.float32, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        w4a16_linear(x, pack_int32(q, 4), scale[:, :1], zero_point, 32)
    with pytest.raises(ValueError, match="do not fit"):
        w4a16_linear(x[:, :56], pack_int32(q, 4), scale, zero_point, 32)


def test_op_inputs_cover_the_asymmetric_partial_group_case():
    op = OPS["w4a16_linear"]
    x, packed, scale, zero_point, group = op.make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
    k = x.shape[1]
    assert k % 8 == 0 and k % group != 0, "in_features must pack into words and leave a partial last group"
    assert packed.dtype == torch.int32 and packed.shape == (scale.shape[0], k // 8)
    assert scale.dtype == x.dtype and scale.shape[1] == math.ceil(k / group)
    assert zero_point is not None and zero_point.dtype == torch.int8
    assert torch.isfinite(op.reference(x, packed, scale, zero_point, group)).all()
