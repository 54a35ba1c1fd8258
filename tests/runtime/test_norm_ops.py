"""norm_ops.rms_norm, the reference of the fused RMSNorm: the decoder's former inline expression and transformers'
LlamaRMSNorm bit for bit, close to float64, torch's dtype promotion for the weight product, and clear errors."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from accel.runtime.norm_ops import rms_norm
from accel.runtime.ops import OPS

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Relative error bound against float64: float32 arithmetic lands far under 1e-6; the reference rounds twice in a
# 16-bit dtype (the normalized row, then the product with the weight), about 2^-8 / 2^-11 relative each.
BOUND = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}


def former_module_forward(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The runtime's RMSNorm.forward before the op existed, verbatim."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def make(shape: tuple[int, ...], dtype: torch.dtype, weight_dtype: torch.dtype | None = None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.logspace(-3, 3, torch.Size(shape[:-1]).numel()).reshape(*shape[:-1], 1)
    x = (torch.randn(*shape, generator=gen) * rows).to(dtype)
    weight = (1.0 + 0.5 * torch.randn(shape[-1], generator=gen)).to(weight_dtype or dtype)
    return x, weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 576), (3, 200), (17, 1000), (2, 3, 576), (4, 4096), (5,)])
def test_equals_the_former_module_math_exactly(dtype, weight_dtype, shape):
    x, weight = make(shape, dtype, weight_dtype, seed=len(shape) * 100 + shape[-1])
    got = rms_norm(x, weight, 1e-5)
    want = former_module_forward(x, weight, 1e-5)
    assert got.dtype == want.dtype == torch.promote_types(weight.dtype, dtype)
    assert got.shape == x.shape and torch.equal(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
def test_equals_transformers_llama_rms_norm(dtype):
    x, weight = make((2, 7, 576), dtype, seed=3)
    module = LlamaRMSNorm(576, eps=1e-6).to(dtype)
    with torch.no_grad():
        module.weight.copy_(weight)
        assert torch.equal(rms_norm(x, weight, 1e-6), module(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 200), (17, 1000), (1, 16384)])
def test_close_to_float64(dtype, shape):
    x, weight = make(shape, dtype, seed=shape[-1])
    x64 = x.double()
    expected = weight.double() * x64 / (x64.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    got = rms_norm(x, weight, 1e-5).double()
    error = float(((got - expected).norm(dim=-1) / expected.norm(dim=-1)).max())  # the worst row, tiny or huge
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def test_eps_keeps_an_all_zero_row_finite():
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    x[1] = 1.0
    out = rms_norm(x, torch.full((64,), 2.0, dtype=torch.bfloat16), 1e-6)
    assert torch.equal(out[0], torch.zeros(64, dtype=torch.bfloat16))
    torch.testing.assert_close(out[1], torch.full((64,), 2.0, dtype=torch.bfloat16))


def test_op_inputs_cover_the_odd_shapes_and_a_promoting_weight():
    op = OPS["rms_norm"]
    made = [make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for make_inputs in op.input_makers]
    assert [tuple(x.shape) for x, _, _ in made] == [(3, 200), (1, 576), (2, 3, 576), (17, 1000)]
    assert {w.dtype for _, w, _ in made} == {torch.bfloat16, torch.float32}


@pytest.mark.parametrize(
    ("x", "weight", "match"),
    [
        (torch.randn(3, 8), torch.ones(7), r"weight torch.float32 \(7,\) must be a floating-point \[hidden\] .* 8"),
        (torch.randn(3, 8), torch.ones(1, 8), r"weight .* \(1, 8\) must be"),
        (torch.randn(3, 8), torch.ones(8, dtype=torch.int32), "weight torch.int32"),
        (torch.tensor(1.0), torch.ones(1), r"x must be a floating-point tensor \[..., hidden\], got .* \(\)"),
        (torch.ones(3, 8, dtype=torch.int64), torch.ones(8), "x must be a floating-point tensor"),
    ],
)
def test_arguments_off_the_contract_are_named(x, weight, match):
    with pytest.raises(ValueError, match=match):
        rms_norm(x, weight, 1e-5)
