"""norm_fold_ops: RMSNorm folded into the W4A16 linears around it. The references against float64 (the unfused
chain linear -> add -> RMSNorm -> linear computed in float64), h bit for bit as add_rms_norm rounds it, and clear
errors."""

from __future__ import annotations

import pytest
import torch

from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.norm_fold_ops import rms_scale, sum_of_squares, w4a16_linear_residual, w4a16_linear_rms
from accel.runtime.norm_ops import add_rms_norm, rms_norm
from accel.runtime.ops import OPS, w4a16_linear, w4a16_weight
from accel.runtime.packing import pack_int32

# Relative error against float64: float32 far under 1e-5; bf16 rounds x @ W^T, h and h * w (2^-8 each).
BOUND = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _weights(dtype: torch.dtype, seed: int):
    """w4a16_linear's test weights: asymmetric, in_features 200 in groups of 64 (a partial last group), 76 rows."""
    return OPS["w4a16_linear"].make_inputs(torch.Generator().manual_seed(seed), "cpu", dtype)[1:]


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_folded_chain_is_the_unfused_one_in_float64(dtype):
    """w4a16_linear_residual then w4a16_linear_rms equals linear -> add -> rms_norm -> linear in float64."""
    gen = torch.Generator().manual_seed(1)
    packed, scale, zero, group = _weights(dtype, seed=0)
    k2 = 76  # the next linear reads the stream: its in_features are this one's out_features
    w2 = torch.randn(40, k2, generator=gen)
    qw = quantize(w2, WeightQuantArgs(num_bits=4, symmetric=True, strategy="group", group_size=k2))
    packed2, scale2 = pack_int32(qw.q, 4), qw.scale.to(dtype)
    x = (torch.randn(3, 200, generator=gen) * torch.tensor([[0.1], [1.0], [10.0]])).to(dtype)
    residual = (torch.randn(3, 76, generator=gen) * 5).to(dtype)
    norm_weight = (1.0 + 0.5 * torch.randn(76, generator=gen)).to(dtype)
    eps = 1e-5

    h, hw, ss = w4a16_linear_residual(x, packed, scale, zero, group, residual, norm_weight)
    got = w4a16_linear_rms(hw, packed2, scale2, None, 76, ss, eps)
    # any split of the sums of squares into partial sums gives the same product (a kernel writes one per program)
    parts = sum_of_squares(h.unflatten(-1, (4, 19))).squeeze(-1)
    torch.testing.assert_close(w4a16_linear_rms(hw, packed2, scale2, None, 76, parts, eps), got, rtol=1e-6, atol=0)

    w1 = w4a16_weight(200, packed, scale, zero, group).double()
    w2q = w4a16_weight(76, packed2, scale2, None, 76).double()
    h64 = x.double() @ w1.T + residual.double()
    normed = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    want = normed @ w2q.T
    assert h.dtype == hw.dtype == got.dtype == dtype
    assert _relative(h, h64) < BOUND[dtype]
    assert _relative(got, want) < BOUND[dtype]
    # h is the unfused stream bit for bit: the linear's output in x's dtype, then torch's sum rounded once
    _, h_unfused = add_rms_norm(w4a16_linear(x, packed, scale, zero, group), residual, norm_weight, eps)
    assert torch.equal(h, h_unfused)
    assert torch.equal(hw, (h.float() * norm_weight.float()).to(dtype))
    assert ss.shape == (3, 1) and ss.dtype == torch.float32
    torch.testing.assert_close(ss.double(), h.double().pow(2).sum(-1, keepdim=True), rtol=1e-6, atol=0)
    # and against the unfused pipeline in the same dtype: the rounding points moved, nothing else
    unfused = w4a16_linear(rms_norm(h, norm_weight, eps), packed2, scale2, None, 76)
    assert _relative(got, unfused.double()) < BOUND[dtype]


def test_rms_scale_is_rmsnorms_scalar():
    h = torch.randn(4, 64, dtype=torch.float64) * torch.tensor([[1e-3], [1.0], [1e2], [0.0]])
    r = rms_scale(sum_of_squares(h.float().unflatten(-1, (8, 8))).squeeze(-1), 64, 1e-6)
    want = torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert r.shape == (4, 1) and r.dtype == torch.float32
    torch.testing.assert_close(r.double(), want, rtol=1e-6, atol=0)


def test_bad_inputs_name_the_argument():
    x, packed, scale, zero, group, residual, norm_weight = OPS["w4a16_linear_residual"].make_inputs(
        torch.Generator().manual_seed(0), "cpu", torch.bfloat16
    )
    with pytest.raises(ValueError, match="residual"):
        w4a16_linear_residual(x, packed, scale, zero, group, residual[:, :10], norm_weight)
    with pytest.raises(ValueError, match="residual"):
        w4a16_linear_residual(x, packed, scale, zero, group, residual.float(), norm_weight)
    with pytest.raises(ValueError, match="norm_weight"):
        w4a16_linear_residual(x, packed, scale, zero, group, residual, norm_weight[:-1])
    xr, packed, scale, zero, group, ss, eps = OPS["w4a16_linear_rms"].make_inputs(
        torch.Generator().manual_seed(0), "cpu", torch.bfloat16
    )
    with pytest.raises(ValueError, match="ss "):
        w4a16_linear_rms(xr, packed, scale, zero, group, ss[:2], eps)
    with pytest.raises(ValueError, match="ss "):
        w4a16_linear_rms(xr, packed, scale, zero, group, ss.double(), eps)
    with pytest.raises(ValueError, match="eps"):
        w4a16_linear_rms(xr, packed, scale, zero, group, ss, 0.0)
