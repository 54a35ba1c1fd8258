"""AWQ: activation-aware weight quantization (Lin et al., 2023, arXiv:2306.00978).

A few input channels carry much larger activations than the rest, and a weight's rounding error in such a
channel is multiplied by that activation. AWQ scales those channels' weights up before rounding (the
pipeline folds 1/s into the previous op), then searches each group's clipping range.

Scale search (`smooth`), for linears W_i [out_i, in] that all read X [n, in]:
    x̄_j     = mean_n |X_nj|
    s(α)    = x̄^α                        duo scaling: x̄^α / (w̄^(1-α) + 1e-4), w̄_j = mean over the rows
                                           of |W| / (the max |W| of its quantization group)
    s       ← max(s, 1e-4),   s ← s / sqrt(max s · min s)        (AutoAWQ's clamp and normalisation)
    loss(s) = Σ_i || X W_iᵀ − (X diag(1/s)) Q(W_i diag s)ᵀ ||²_F      Q: round-to-nearest with the args
for α = k / n_grid, k = 0 .. n_grid - 1. The baseline s = 1 (plain RTN; α = 0 without duo scaling) is a
candidate, so the chosen s never loses to RTN on this objective. With D_i = W_i − Q(W_i diag s) diag(1/s)
the loss is Σ_i ||X D_iᵀ||² = Σ_i tr(D_i H D_iᵀ), H = XᵀX, so X enters once, through H [in, in].

Clipping search (`quantize_weight`): every cell that shares a scale (a row's group, a row, or the tensor)
has the observed range [w_min, w_max]; for r = 1 ... 1 - max_shrink (n_grid points) its grid is built from
[r·w_min, r·w_max] (symmetric: ±r·max|w|), and each cell keeps the r with the smallest output error
    || X_g (w_g − Q_r(w_g))ᵀ ||² = e H_g eᵀ,    e = w_g − Q_r(w_g),  H_g = X_gᵀ X_g
(X_g: the input columns of that group). r = 1 is RTN and comes first, so no cell's error grows.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field

from accel.quantization import LinearStats, QuantizedWeight, QuantMethod, WeightQuantArgs, dequantize, quantize
from accel.quantization.method import SmoothGroup
from accel.quantization.weight_quant import compute_qparams, quantize_with_qparams

SCALE_MIN = 1e-4  # AutoAWQ's floor on the scales (and on w̄^(1-α) in duo scaling)


class AWQConfig(BaseModel):
    """AWQ's search settings (AutoAWQ's defaults)."""

    model_config = {"extra": "forbid"}
    n_grid: int = Field(20, ge=1, description="grid points of both searches: α in [0, 1) and the clip ratio r")
    max_shrink: float = Field(0.5, ge=0.0, lt=1.0, description="the clip ratio r goes from 1 down to 1 - max_shrink")
    clip: bool = Field(True, description="search clipping ranges; False quantizes with the full min/max ranges")
    max_search_rows: int = Field(4096, ge=1, description="input rows used by the searches (evenly spaced sample)")
    duo_scaling: bool = Field(False, description="s = x̄^α / w̄^(1-α) instead of s = x̄^α")


class AWQ(QuantMethod):
    requires_calibration = True

    def __init__(self, config: AWQConfig) -> None:
        self.config = config

    def smooth(self, group: SmoothGroup, args: WeightQuantArgs) -> torch.Tensor | None:
        """Per-input-channel scales s [in] with the smallest output error after RTN, or None for s = 1."""
        dtype = _work_dtype(group.inputs)
        x = _sample_rows(group.inputs, self.config.max_search_rows, dtype)
        weights = [w.to(device=x.device, dtype=dtype) for w in group.weights.values()]
        hessian = x.T @ x  # H = XᵀX
        x_mean = x.abs().mean(dim=0)  # x̄
        w_mean = _normalised_weight_mean(weights, args) if self.config.duo_scaling else None

        best_loss = sum(_smoothing_loss(w, torch.ones_like(x_mean), hessian, args) for w in weights)
        best_scales = None
        first = 0 if self.config.duo_scaling else 1  # without duo scaling α = 0 is s = 1, the baseline above
        for k in range(first, self.config.n_grid):
            scales = _candidate_scales(x_mean, w_mean, k / self.config.n_grid)
            loss = sum(_smoothing_loss(w, scales, hessian, args) for w in weights)
            if loss < best_loss:
                best_loss, best_scales = loss, scales
        return None if best_scales is None else best_scales.to(group.inputs.dtype)

    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        """Quantize with the clipping range per cell that minimises the output error on stats.inputs."""
        if stats is None or stats.inputs is None:
            missing = "stats" if stats is None else "stats.inputs"
            raise ValueError(f"awq needs calibration: {missing} is missing (a sample of the layer's inputs [n, in])")
        if stats.inputs.shape[-1] != weight.shape[1]:
            raise ValueError(f"stats.inputs has {stats.inputs.shape[-1]} columns, the weight {weight.shape[1]} inputs")
        if args.is_fp8 or not self.config.clip:
            return quantize(weight, args)
        return self._clip_search(weight, stats.inputs, args)

    def _clip_search(self, weight: torch.Tensor, inputs: torch.Tensor, args: WeightQuantArgs) -> QuantizedWeight:
        dtype = _work_dtype(weight, inputs)
        w = weight.to(dtype)
        x = _sample_rows(inputs, self.config.max_search_rows, dtype).to(w.device)
        group_len = _group_len(args, w.shape[1])
        w_min, w_max = _ranges(w, group_len, args)
        x_groups = _by_group(x, group_len, "constant")  # [n, groups, g]
        # H_g = X_gᵀ X_g costs out·in·g per ratio against n·in·out for X_g eᵀ directly: use it when g <= n.
        hessians = torch.einsum("ngi,ngj->gij", x_groups, x_groups) if group_len <= len(x) else None
        ratios = torch.linspace(1.0, 1.0 - self.config.max_shrink, self.config.n_grid, dtype=dtype, device=w.device)
        errors = torch.stack(
            [_clip_error(w, r * w_min, r * w_max, x_groups, hessians, group_len, args) for r in ratios]
        )
        best = ratios[errors.argmin(dim=0)]  # the first (largest) r among equal errors: r = 1 wins ties
        scale, zero_point = compute_qparams(best * w_min, best * w_max, args)
        q = quantize_with_qparams(w, scale, zero_point, args)
        return QuantizedWeight(q=q, scale=scale.to(weight.dtype), zero_point=zero_point, args=args)


def _work_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (searches never run in half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _sample_rows(inputs: torch.Tensor, max_rows: int, dtype: torch.dtype) -> torch.Tensor:
    """At most max_rows rows of the inputs [.., in] as [n, in], evenly spaced (deterministic)."""
    rows = inputs.reshape(-1, inputs.shape[-1])
    if len(rows) > max_rows:
        index = torch.linspace(0, len(rows) - 1, max_rows, dtype=torch.float64, device=rows.device).round().long()
        rows = rows[index]
    return rows.to(dtype)


def _group_len(args: WeightQuantArgs, in_features: int) -> int:
    """Columns of a row that share one scale: the group size, or the whole row (channel and tensor)."""
    return args.group_size if args.strategy == "group" else in_features


def _by_group(t: torch.Tensor, group_len: int, mode: Literal["replicate", "constant"]) -> torch.Tensor:
    """[rows, in] as [rows, groups, g]. A partial last group is padded with copies of the row's last column
    ("replicate": min and max unchanged) or with zeros ("constant": adds nothing to a product)."""
    rows, in_features = t.shape
    pad = -in_features % group_len
    if pad:
        t = F.pad(t, (0, pad), mode=mode)
    return t.reshape(rows, -1, group_len)


def _ranges(w: torch.Tensor, group_len: int, args: WeightQuantArgs) -> tuple[torch.Tensor, torch.Tensor]:
    """Observed [w_min, w_max] per cell, shaped like the scales: [out, groups], [out, 1] or [1, 1]."""
    grouped = _by_group(w, group_len, "replicate")
    w_min, w_max = grouped.amin(dim=-1), grouped.amax(dim=-1)
    if args.strategy == "tensor":
        return w_min.amin().reshape(1, 1), w_max.amax().reshape(1, 1)
    return w_min, w_max


def _fake_quantize(w: torch.Tensor, w_min: torch.Tensor, w_max: torch.Tensor, args: WeightQuantArgs) -> torch.Tensor:
    """Q(w) on the grid built from the range [w_min, w_max] per cell, dequantized to w's dtype."""
    scale, zero_point = compute_qparams(w_min, w_max, args)
    return dequantize(quantize_with_qparams(w, scale, zero_point, args), scale, zero_point, args, w.dtype)


def _clip_error(
    w: torch.Tensor,
    w_min: torch.Tensor,
    w_max: torch.Tensor,
    x_groups: torch.Tensor,
    hessians: torch.Tensor | None,
    group_len: int,
    args: WeightQuantArgs,
) -> torch.Tensor:
    """Output error ||X_g (w_g − Q(w_g))ᵀ||² per cell, shaped like w_min."""
    e = _by_group(w - _fake_quantize(w, w_min, w_max, args), group_len, "constant")  # [out, groups, g]
    if hessians is not None:
        per_group = torch.einsum("ogi,gij,ogj->og", e, hessians, e)  # e H_g eᵀ
    else:
        per_group = torch.einsum("ngi,ogi->nog", x_groups, e).square().sum(dim=0)  # ||X_g eᵀ||²
    return per_group.sum().reshape(1, 1) if args.strategy == "tensor" else per_group


def _normalised_weight_mean(weights: list[torch.Tensor], args: WeightQuantArgs) -> torch.Tensor:
    """w̄_j: the mean over all the linears' rows of |W_j| / (max |W| of its quantization group) [in]."""
    w = torch.cat(weights).abs()
    grouped = _by_group(w, _group_len(args, w.shape[1]), "replicate")
    normalised = grouped / (grouped.amax(dim=-1, keepdim=True) + 1e-6)
    return normalised.reshape(len(w), -1)[:, : w.shape[1]].mean(dim=0)


def _candidate_scales(x_mean: torch.Tensor, w_mean: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """s = x̄^α (or x̄^α / (w̄^(1-α) + 1e-4)), floored at 1e-4, divided by sqrt(max s · min s)."""
    scales = x_mean.pow(alpha)
    if w_mean is not None:
        scales = scales / (w_mean.pow(1 - alpha) + SCALE_MIN)
    scales = scales.clamp(min=SCALE_MIN)
    return scales / torch.sqrt(scales.max() * scales.min())


def _smoothing_loss(w: torch.Tensor, scales: torch.Tensor, hessian: torch.Tensor, args: WeightQuantArgs) -> float:
    """||X Dᵀ||² = tr(D H Dᵀ) with D = W − Q(W diag s) diag(1/s)."""
    d = w - quantize(w * scales, args).dequantize(w.dtype) / scales
    return float(((d @ hessian) * d).sum())
