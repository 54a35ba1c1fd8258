"""act_ops.silu_and_mul, the reference of the fused SwiGLU activation: the MLP's former expression bit for bit, torch's
float32 silu rounded to x's dtype then the product, close to float64, and clear errors."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.act_ops import silu_and_mul
from accel.runtime.ops import OPS

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative error per element against float64: float32 lands within a few ulps; a 16-bit dtype rounds twice (silu,
# then the product), 2^-8 / 2^-11 relative each.
BOUND = {torch.float32: 1e-6, torch.bfloat16: 2 * 2.0**-8 + 1e-6, torch.float16: 2 * 2.0**-11 + 1e-6}
# fp16's subnormals (spacing 2^-24) below 2^-14: an absolute error of half a spacing in silu, times |up| < ~20.
ATOL = {torch.float32: 0.0, torch.bfloat16: 0.0, torch.float16: 20 * 2.0**-25}


def make(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen) * 4).to(dtype)


def former_mlp_activation(x: torch.Tensor) -> torch.Tensor:
    """The decoder MLP's expression before the op: gate, up = gate_up.split(I, -1); silu(gate) * up."""
    gate, up = x.split(x.shape[-1] // 2, dim=-1)
    return torch.nn.functional.silu(gate) * up


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 2 * 1536), (3, 400), (2, 3, 1152), (5, 74), (4, 2 * 14336), (2,)])
def test_equals_the_former_mlp_expression_and_its_two_roundings(dtype, shape):
    x = make(shape, dtype, seed=shape[-1])
    got = silu_and_mul(x)
    assert got.dtype == dtype and got.shape == (*shape[:-1], shape[-1] // 2)
    assert torch.equal(got, former_mlp_activation(x))
    # torch's formula in float32, rounded to x's dtype, times up in float32, rounded again. On the CPU torch's silu
    # takes its own vectorized exp, so in float32 only within a few ulps; 16-bit roundings hide that here.
    gate, up = x.float().split(shape[-1] // 2, -1)
    silu = (gate / (1 + torch.exp(-gate))).to(dtype)
    formula = (silu.float() * up).to(dtype)
    if dtype == torch.float32:
        torch.testing.assert_close(got, formula, rtol=1e-6, atol=0)
    else:
        assert torch.equal(got, formula)


@pytest.mark.parametrize("dtype", DTYPES)
def test_close_to_float64(dtype):
    x = make((17, 2000), dtype, seed=3)
    gate, up = x.double().split(1000, -1)
    expected = gate * torch.sigmoid(gate) * up
    got = silu_and_mul(x).double()
    excess = (got - expected).abs() - (BOUND[dtype] * expected.abs() + ATOL[dtype])
    assert float(excess.max()) <= 0


def test_the_tails_of_silu():
    """exp(-g) overflows for very negative gates (silu -> -0) and vanishes for large ones (silu -> g)."""
    x = torch.tensor([[-200.0, -90.0, 0.0, 90.0, 200.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    got = silu_and_mul(x)
    assert torch.equal(got, torch.tensor([[-0.0, -0.0, 0.0, 90.0, 200.0]]))  # exp(90) overflows float32 already
    assert got.signbit().tolist() == [[True, True, False, False, False]]


def test_op_inputs_reach_the_tails_and_odd_sizes():
    op = OPS["silu_and_mul"]
    made = [make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for make_inputs in op.input_makers]
    assert [tuple(x.shape) for (x,) in made] == [(3, 400), (1, 3072), (2, 3, 1152), (5, 74), (17, 2000)]
    gates = torch.cat([x[..., : x.shape[-1] // 2].reshape(-1).float() for (x,) in made])
    assert float(gates.min()) < -30 and float(gates.max()) > 30


@pytest.mark.parametrize(
    "x",
    [torch.randn(3, 7), torch.randn(3, 0), torch.tensor(1.0), torch.ones(2, 8, dtype=torch.int32)],
    ids=["odd", "empty-last", "scalar", "int"],
)
def test_arguments_off_the_contract_are_named(x):
    with pytest.raises(ValueError, match=r"silu_and_mul: x must be a floating-point tensor \[..., 2 \* intermediate\]"):
        silu_and_mul(x)
