"""SmoothQuant against its definition (Xiao et al., 2023), in float64.

W8A8 as the paper runs it: activations int8 per token (s_t = max|x_t| / 127), weights int8 per output channel.
"""

import pytest
import torch
from accel_smoothquant.method import SmoothQuant, SmoothQuantConfig
from pydantic import ValidationError

from accel.quantization import LinearStats, WeightQuantArgs, quantize
from accel.quantization.method import SmoothGroup

F64 = torch.float64
INT8_CHANNEL = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel", group_size=-1)


def _group(seed: int, outliers: bool, rows: int = 512, in_features: int = 256) -> SmoothGroup:
    """Three linears reading X; `outliers` multiplies four input columns by 50 (the paper's outlier channels)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=gen, dtype=F64)
    if outliers:
        x[:, torch.randperm(in_features, generator=gen)[:4]] *= 50.0
    weights = {
        name: torch.randn(out, in_features, generator=gen, dtype=F64) * 0.02
        for name, out in (("q_proj", 128), ("k_proj", 64), ("v_proj", 64))
    }
    return SmoothGroup(name="layers.0.input_layernorm", weights=weights, inputs=x, act_absmax=x.abs().amax(dim=0))


def _per_token_int8(x: torch.Tensor) -> torch.Tensor:
    """Symmetric per-token int8 fake quantization: s_t = max|x_t| / 127, x^ = round(x / s_t) · s_t."""
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(x / scale), -127, 127) * scale


def _relative(error: torch.Tensor, reference: torch.Tensor) -> float:
    return float(error.norm() / reference.norm())


@pytest.mark.parametrize("alpha", [0.5, 0.8])
def test_scales_follow_the_definition(alpha):
    group = _group(seed=0, outliers=True)
    s = SmoothQuant(SmoothQuantConfig(alpha=alpha)).smooth(group, INT8_CHANNEL)
    x_max = group.inputs.abs().amax(dim=0)
    w_max = torch.cat(list(group.weights.values())).abs().amax(dim=0)
    torch.testing.assert_close(s, x_max**alpha / w_max ** (1 - alpha), rtol=1e-12, atol=0)
    # max|X_j / s_j| = max|X_j|^(1-α) · max|W_j|^(1-α), and max|W_j s_j| = max|X_j|^α · max|W_j|^α.
    torch.testing.assert_close((group.inputs / s).abs().amax(dim=0), (x_max * w_max) ** (1 - alpha), rtol=1e-12, atol=0)
    smoothed_w_max = torch.cat([w * s for w in group.weights.values()]).abs().amax(dim=0)
    torch.testing.assert_close(smoothed_w_max, (x_max * w_max) ** alpha, rtol=1e-12, atol=0)


def test_smoothing_preserves_the_function():
    group = _group(seed=1, outliers=True)
    s = SmoothQuant(SmoothQuantConfig()).smooth(group, INT8_CHANNEL)
    for w in group.weights.values():
        torch.testing.assert_close((group.inputs / s) @ (w * s).T, group.inputs @ w.T, rtol=1e-12, atol=1e-12)


def test_dead_channels_give_finite_scales():
    group = _group(seed=2, outliers=False)
    group.act_absmax[:3] = 0.0
    s = SmoothQuant(SmoothQuantConfig()).smooth(group, INT8_CHANNEL)
    assert torch.isfinite(s).all() and (s > 0).all()


def test_outliers_w8a8_error_drops_with_smoothing():
    """Activation error in the layer's units: e = Q(X diag(1/s)) diag(s) − X (s = 1 before smoothing)."""
    group = _group(seed=3, outliers=True)
    method = SmoothQuant(SmoothQuantConfig())
    s = method.smooth(group, INT8_CHANNEL)
    x, xs = group.inputs, group.inputs / s
    error_before, error_after = _per_token_int8(x) - x, _per_token_int8(xs) * s - x
    normal = x.abs().amax(dim=0) < 20  # the 252 channels without outliers
    w = torch.cat(list(group.weights.values()))
    y = x @ w.T
    own_units = (_relative(error_before, x), _relative(_per_token_int8(xs) - xs, xs))
    x_normal = x[:, normal]
    normal_channels = (_relative(error_before[:, normal], x_normal), _relative(error_after[:, normal], x_normal))
    activation_only = (_relative(error_before @ w.T, y), _relative(error_after @ w.T, y))

    stats = LinearStats(inputs=x)
    w_hat = method.quantize_weight(w, INT8_CHANNEL, stats).dequantize(F64)
    ws_hat = method.quantize_weight(w * s, INT8_CHANNEL, stats).dequantize(F64)
    w8a8 = (_relative(_per_token_int8(x) @ w_hat.T - y, y), _relative(_per_token_int8(xs) @ ws_hat.T - y, y))
    for label, (before, after) in (
        ("activation error, each in its own units", own_units),
        ("activation error, channels without outliers", normal_channels),
        ("output error, int8 activations only", activation_only),
        ("output error, W8A8", w8a8),
    ):
        print(f"{label}: {before:.5f} before smoothing, {after:.5f} after")
    assert own_units[1] < own_units[0]
    assert normal_channels[1] < normal_channels[0] / 4
    assert activation_only[1] < activation_only[0] / 4
    assert w8a8[1] < w8a8[0] / 2


def test_quantize_weight_is_round_to_nearest_and_needs_stats():
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(4), dtype=F64)
    method = SmoothQuant(SmoothQuantConfig())
    stats = LinearStats(num_tokens=0)
    fp8 = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel", group_size=-1, type="float")
    for args in (INT8_CHANNEL, fp8):
        got, expected = method.quantize_weight(weight, args, stats), quantize(weight, args)
        assert torch.equal(got.q.view(torch.int8), expected.q.view(torch.int8))
        assert torch.equal(got.scale, expected.scale)
    with pytest.raises(ValueError, match="stats is missing"):
        method.quantize_weight(weight, INT8_CHANNEL, None)


@pytest.mark.parametrize("alpha", [-0.1, 1.01])
def test_alpha_outside_the_unit_interval_is_rejected(alpha):
    with pytest.raises(ValidationError):
        SmoothQuantConfig(alpha=alpha)


def test_config_rejects_unknown_fields():
    with pytest.raises(ValidationError):
        SmoothQuantConfig(beta=0.5)
