"""AWQ against its definition (Lin et al., 2023), in float64, with the searches redone by brute force.

Output error of a group of linears W_i reading X, with scales s folded in and Q the quantizer:
    err(s, Q) = sqrt(Σ_i || X W_iᵀ − (X diag(1/s)) Q(W_i diag s)ᵀ ||²_F)
RTN is s = 1 with plain round-to-nearest.
"""

from collections.abc import Callable

import pytest
import torch
from accel_awq.method import AWQ, AWQConfig
from pydantic import ValidationError

from accel.quantization import LinearStats, WeightQuantArgs, quantize
from accel.quantization.method import SmoothGroup

F64 = torch.float64
Quantizer = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (W diag s, X diag(1/s)) -> Q(W diag s)


def _group(seed: int, salient: bool, rows: int = 1024, in_features: int = 256) -> SmoothGroup:
    """Three linears (q, k, v shaped) reading X; `salient` scales four input columns by 10, 20, 35 and 50."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, in_features, generator=gen, dtype=F64)
    if salient:
        columns = torch.randperm(in_features, generator=gen)[:4]
        x[:, columns] *= torch.tensor([10.0, 20.0, 35.0, 50.0], dtype=F64)
    weights = {
        name: torch.randn(out, in_features, generator=gen, dtype=F64)
        for name, out in (("q_proj", 64), ("k_proj", 64), ("v_proj", 128))
    }
    return SmoothGroup(name="layers.0.input_layernorm", weights=weights, inputs=x, act_absmax=x.abs().amax(dim=0))


def _rtn(args: WeightQuantArgs) -> Quantizer:
    return lambda w, _x: quantize(w, args).dequantize(F64)


def _awq(method: AWQ, args: WeightQuantArgs) -> Quantizer:
    return lambda w, x: method.quantize_weight(w, args, LinearStats(inputs=x)).dequantize(F64)


def _output_error(group: SmoothGroup, scales: torch.Tensor | None, quantizer: Quantizer) -> float:
    x = group.inputs
    s = torch.ones(x.shape[1], dtype=F64) if scales is None else scales
    total = sum(float((x @ w.T - (x / s) @ quantizer(w * s, x / s).T).square().sum()) for w in group.weights.values())
    return total**0.5


def _hand_scales(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = mean|X|^α, floored at 1e-4, divided by sqrt(max s · min s)."""
    s = x.abs().mean(dim=0).pow(alpha).clamp(min=1e-4)
    return s / torch.sqrt(s.max() * s.min())


@pytest.mark.parametrize("group_size", [32, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_awq_beats_rtn_with_salient_channels(group_size, symmetric):
    group = _group(seed=0, salient=True)
    args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=group_size)
    method = AWQ(AWQConfig())
    scales = method.smooth(group, args)
    assert scales is not None and scales.shape == (256,) and scales.dtype == F64 and (scales > 0).all()

    reference = sum(float((group.inputs @ w.T).square().sum()) for w in group.weights.values()) ** 0.5
    rtn = _output_error(group, None, _rtn(args)) / reference
    smoothed = _output_error(group, scales, _rtn(args)) / reference
    awq = _output_error(group, scales, _awq(method, args)) / reference
    print(
        f"w4 g{group_size} sym={symmetric}: relative output error RTN {rtn:.4f}, "
        f"scales + RTN {smoothed:.4f}, AWQ (scales + clipping) {awq:.4f}"
    )
    assert smoothed < 0.8 * rtn
    assert awq < smoothed


@pytest.mark.parametrize("symmetric", [True, False])
def test_chosen_scales_are_the_brute_force_minimum(symmetric):
    group = _group(seed=1, salient=True, rows=512, in_features=128)
    args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=32)
    n_grid = 20
    losses = [_output_error(group, _hand_scales(group.inputs, k / n_grid), _rtn(args)) ** 2 for k in range(n_grid)]
    best = min(range(n_grid), key=losses.__getitem__)
    assert best > 0, "salient channels should make some α > 0 win"

    scales = AWQ(AWQConfig(n_grid=n_grid)).smooth(group, args)
    assert scales is not None
    torch.testing.assert_close(scales, _hand_scales(group.inputs, best / n_grid), rtol=1e-12, atol=0)
    loss = _output_error(group, scales, _rtn(args)) ** 2
    assert loss == pytest.approx(losses[best], rel=1e-12)
    assert loss <= min(losses) * (1 + 1e-12)


def test_scales_are_none_when_no_channel_stands_out():
    """Every channel has mean |X| = 1, so every α gives s = 1: nothing to migrate."""
    group = _group(seed=2, salient=False)
    group.inputs = torch.sign(group.inputs)
    assert AWQ(AWQConfig()).smooth(group, WeightQuantArgs(num_bits=4, group_size=32)) is None


def _hand_fake_quantize(w: torch.Tensor, lo: float, hi: float, args: WeightQuantArgs) -> torch.Tensor:
    """weight_quant's formulas for one cell whose grid is built from the range [lo, hi]."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if args.symmetric:
        scale = max(-lo, hi) / ((args.qmax - args.qmin) / 2)
        return torch.clamp(torch.round(w / scale), args.qmin, args.qmax) * scale
    scale = (hi - lo) / (args.qmax - args.qmin)
    zero_point = min(max(args.qmin - round(lo / scale), args.qmin), args.qmax)
    return (torch.clamp(torch.round(w / scale) + zero_point, args.qmin, args.qmax) - zero_point) * scale


def _clip_problem(rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A 12 x 40 weight and `rows` input rows with uneven column scales."""
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(12, 40, generator=gen, dtype=F64)
    x = torch.randn(rows, 40, generator=gen, dtype=F64) * torch.rand(40, generator=gen, dtype=F64).mul(4).add(0.5)
    return weight, x


@pytest.mark.parametrize("group_size", [8, 16])  # 40 inputs: 5 full groups of 8; 16 + 16 + a partial 8
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("rows", [64, 6])  # 6 < group size: the error is taken from X_g eᵀ, not from X_gᵀ X_g
def test_clipping_is_the_per_group_brute_force_minimum(group_size, symmetric, rows):
    weight, x = _clip_problem(rows)
    args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=group_size)
    config = AWQConfig()
    w_hat = AWQ(config).quantize_weight(weight, args, LinearStats(inputs=x)).dequantize(F64)
    rtn = quantize(weight, args).dequantize(F64)
    ratios = torch.linspace(1.0, 1.0 - config.max_shrink, config.n_grid, dtype=F64).tolist()

    gains = []
    for row in range(12):
        for start in range(0, 40, group_size):
            cols = slice(start, start + group_size)
            w, x_g = weight[row, cols], x[:, cols]
            errors = [
                float((x_g @ (w - _hand_fake_quantize(w, r * float(w.min()), r * float(w.max()), args))).square().sum())
                for r in ratios
            ]
            chosen = float((x_g @ (w - w_hat[row, cols])).square().sum())
            unclipped = float((x_g @ (w - rtn[row, cols])).square().sum())
            assert unclipped == pytest.approx(errors[0], rel=1e-12)  # r = 1 is RTN
            assert chosen == pytest.approx(min(errors), rel=1e-9)
            assert chosen <= unclipped * (1 + 1e-12)
            gains.append(unclipped - chosen)
    assert max(gains) > 0, "clipping should help some group"


@pytest.mark.parametrize("strategy", ["channel", "tensor"])
def test_clipping_per_channel_and_per_tensor_is_the_brute_force_minimum(strategy):
    weight, x = _clip_problem(64)
    args = WeightQuantArgs(num_bits=4, symmetric=False, strategy=strategy, group_size=-1)
    config = AWQConfig()
    w_hat = AWQ(config).quantize_weight(weight, args, LinearStats(inputs=x)).dequantize(F64)
    ratios = torch.linspace(1.0, 1.0 - config.max_shrink, config.n_grid, dtype=F64).tolist()
    cells = [weight[row : row + 1] for row in range(12)] if strategy == "channel" else [weight]
    chosen = float((x @ (weight - w_hat).T).square().sum())
    best = sum(
        min(
            float((x @ (w - _hand_fake_quantize(w, r * float(w.min()), r * float(w.max()), args)).T).square().sum())
            for r in ratios
        )
        for w in cells
    )
    unclipped = float((x @ (weight - quantize(weight, args).dequantize(F64)).T).square().sum())
    assert chosen == pytest.approx(best, rel=1e-9)
    assert chosen < unclipped


def test_uniform_inputs_gain_little_and_never_lose():
    """No salient channels: the scale search finds (almost) nothing; the whole method never loses to RTN."""
    for seed in range(3):
        for symmetric in (True, False):
            group = _group(seed=10 + seed, salient=False, rows=512)
            args = WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=128)
            method = AWQ(AWQConfig())
            scales = method.smooth(group, args)
            rtn = _output_error(group, None, _rtn(args))
            smoothed = _output_error(group, scales, _rtn(args))
            awq = _output_error(group, scales, _awq(method, args))
            print(
                f"uniform seed={seed} sym={symmetric}: scale-search gain {1 - smoothed / rtn:.4f}, "
                f"AWQ gain {1 - awq / rtn:.4f}"
            )
            assert 0 <= 1 - smoothed / rtn < 0.02
            assert 0 <= 1 - awq / rtn < 0.15


def test_duo_scaling_never_loses_to_rtn_on_the_objective():
    group = _group(seed=4, salient=True)
    args = WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=64)
    scales = AWQ(AWQConfig(duo_scaling=True)).smooth(group, args)
    assert _output_error(group, scales, _rtn(args)) <= _output_error(group, None, _rtn(args))


def test_fp8_is_round_to_nearest():
    group = _group(seed=5, salient=True)
    weight = group.weights["q_proj"]
    args = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel", group_size=-1, type="float")
    got = AWQ(AWQConfig()).quantize_weight(weight, args, LinearStats(inputs=group.inputs))
    expected = quantize(weight, args)
    assert torch.equal(got.q.view(torch.int8), expected.q.view(torch.int8)) and torch.equal(got.scale, expected.scale)


def test_missing_stats_raise():
    weight = torch.randn(8, 32, dtype=F64)
    args = WeightQuantArgs(num_bits=4, group_size=32)
    with pytest.raises(ValueError, match="stats is missing"):
        AWQ(AWQConfig()).quantize_weight(weight, args, None)
    with pytest.raises(ValueError, match="stats.inputs is missing"):
        AWQ(AWQConfig()).quantize_weight(weight, args, LinearStats(hessian=torch.eye(32, dtype=F64)))


def test_config_rejects_unknown_and_out_of_range_fields():
    with pytest.raises(ValidationError):
        AWQConfig(alpha=0.5)
    with pytest.raises(ValidationError):
        AWQConfig(max_shrink=1.0)
    with pytest.raises(ValidationError):
        AWQConfig(n_grid=0)
