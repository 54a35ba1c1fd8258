"""norm_ops.rms_norm, the reference of the fused RMSNorm: the decoder's former inline expression and transformers'
LlamaRMSNorm bit for bit, close to float64, torch's dtype promotion for the weight product, and clear errors; and
norm_ops.add_rms_norm, the residual add before it: torch's sum and the same norm, bit for bit."""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama.modeling_llama import LlamaRMSNorm

from accel.runtime.norm_ops import add_rms_norm, rms_norm
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


# add_rms_norm: the residual add fused into the norm.
def make_pair(shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    """An update x and a residual stream of the other rows' magnitudes (1e3 .. 1e-3), so either dominates a row."""
    x, weight = make(shape, dtype, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    rows = torch.logspace(3, -3, torch.Size(shape[:-1]).numel()).reshape(*shape[:-1], 1)
    return x, (torch.randn(*shape, generator=gen) * rows).to(dtype), weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32])
@pytest.mark.parametrize("shape", [(1, 576), (3, 200), (2, 3, 576), (4, 4096), (5,)])
def test_add_rms_norm_is_the_decoders_add_then_the_norm_exactly(dtype, weight_dtype, shape):
    x, residual, weight = make_pair(shape, dtype, seed=shape[-1])
    weight = weight.to(weight_dtype or dtype)
    normed, h = add_rms_norm(x, residual, weight, 1e-5)
    assert h.dtype == dtype and torch.equal(h, x + residual)
    assert normed.dtype == torch.promote_types(weight.dtype, dtype)
    assert torch.equal(normed, former_module_forward(x + residual, weight, 1e-5))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_h_is_the_float32_sum_rounded_once(dtype):
    """torch adds in float32 and rounds once to x's dtype: h is exactly that; for 16-bit inputs also the correctly
    rounded sum (the float32 rounding first could differ only at an exact tie, which these inputs do not hit)."""
    x, residual, weight = make_pair((8, 1000), dtype, seed=5)
    _, h = add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(h, (x.float() + residual.float()).to(dtype))
    if dtype != torch.float32:
        assert torch.equal(h, (x.double() + residual.double()).to(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_close_to_float64(dtype):
    x, residual, weight = make_pair((17, 1000), dtype, seed=7)
    h64 = x.double() + residual.double()
    expected = weight.double() * h64 / (h64.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    normed, _ = add_rms_norm(x, residual, weight, 1e-5)
    error = float(((normed.double() - expected).norm(dim=-1) / expected.norm(dim=-1)).max())
    # 16-bit: h's own rounding adds one more 2^-8 / 2^-11 relative to rms_norm's two.
    assert error < {torch.float32: 1e-6, torch.bfloat16: 1.2e-2, torch.float16: 1.5e-3}[dtype], f"{error:.2e}"


def test_add_rms_norm_op_inputs_match_rms_norms_shapes():
    op = OPS["add_rms_norm"]
    made = [make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for make_inputs in op.input_makers]
    assert [tuple(x.shape) for x, _, _, _ in made] == [(3, 200), (1, 576), (2, 3, 576), (17, 1000)]
    assert all(r.shape == x.shape and r.dtype == x.dtype for x, r, _, _ in made)
    assert {w.dtype for _, _, w, _ in made} == {torch.bfloat16, torch.float32}
    normed, h = op.reference(*made[0])
    assert torch.equal(op.result(op.reference, made[0]), torch.cat([normed.reshape(-1), h.reshape(-1)]))


@pytest.mark.parametrize(
    ("x", "residual", "weight", "match"),
    [
        (torch.randn(3, 8), torch.randn(3, 7), torch.ones(8), r"residual torch.float32 \(3, 7\) must have x's shape"),
        (torch.randn(3, 8), torch.randn(8), torch.ones(8), r"residual .* \(8,\) must have x's shape"),
        (torch.randn(3, 8), torch.randn(3, 8).half(), torch.ones(8), r"residual torch.float16 .*float32 \(3, 8\)"),
        (torch.randn(3, 8), torch.randn(3, 8), torch.ones(7), r"rms_norm: weight torch.float32 \(7,\)"),
        (torch.ones(3, 8, dtype=torch.int64), torch.ones(3, 8, dtype=torch.int64), torch.ones(8), "x must be a float"),
    ],
)
def test_add_rms_norm_arguments_off_the_contract_are_named(x, residual, weight, match):
    with pytest.raises(ValueError, match=match):
        add_rms_norm(x, residual, weight, 1e-5)
