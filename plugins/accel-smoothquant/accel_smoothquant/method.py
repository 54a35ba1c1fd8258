"""SmoothQuant (Xiao et al., 2023, arXiv:2211.10438): accurate W8A8 by smoothing activation outliers.

LLM activations have a few channels with outliers ~100x the rest, so a per-token int8 scale (set by the
outlier) rounds the other channels to almost nothing; weights are flat and easy. SmoothQuant divides each
input channel j by s_j and multiplies the weights' column j by s_j, which leaves the product unchanged,
    Y = X Wᵀ = (X diag(1/s)) (W diag s)ᵀ,
and picks s to split the range between the two:
    s_j = max|X_j|^α / max|W_j|^(1-α)
with max|X_j| over all calibration tokens and max|W_j| over every row of every linear that reads X (both
floored at 1e-5). Then max|X_j / s_j| = max|X_j|^(1-α) · max|W_j|^(1-α) and max|W_j s_j| =
max|X_j|^α · max|W_j|^α: α = 0.5 gives both the same range (the paper's default; 0.75-0.85 for models
with stronger outliers). The weights are then rounded to nearest (int8 per channel, or fp8).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, Field

from accel.quantization import LinearStats, QuantizedWeight, QuantMethod, WeightQuantArgs, quantize
from accel.quantization.method import SmoothGroup

RANGE_MIN = 1e-5  # floor on max|X_j| and max|W_j|, so a dead channel gives a finite s_j


class SmoothQuantConfig(BaseModel):
    """The migration strength α: 0 leaves the activations as they are, 1 moves all their range to the weights."""

    model_config = {"extra": "forbid"}
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="migration strength α in s = max|X|^α / max|W|^(1-α)")


class SmoothQuant(QuantMethod):
    requires_calibration = True

    def __init__(self, config: SmoothQuantConfig) -> None:
        self.config = config

    def smooth(self, group: SmoothGroup, args: WeightQuantArgs) -> torch.Tensor:
        """s_j = max|X_j|^α / max|W_j|^(1-α) [in], from the group's activation ranges and all its weights."""
        dtype = torch.float64 if group.act_absmax.dtype == torch.float64 else torch.float32
        act_max = group.act_absmax.to(dtype).clamp(min=RANGE_MIN)
        columns_max = [w.to(device=act_max.device, dtype=dtype).abs().amax(dim=0) for w in group.weights.values()]
        weight_max = torch.stack(columns_max).amax(dim=0).clamp(min=RANGE_MIN)  # max over every linear's rows
        alpha = self.config.alpha
        return (act_max.pow(alpha) / weight_max.pow(1 - alpha)).to(group.act_absmax.dtype)

    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        """Round-to-nearest with the args' strategy. The step itself reads no statistics, but the method only
        makes sense after calibration-driven smoothing, so it refuses to run without them."""
        if stats is None:
            raise ValueError("smooth_quant needs calibration: stats is missing (smoothing reads activation ranges)")
        return quantize(weight, args)
