"""RTN (round-to-nearest): the baseline every other method is measured against."""

from __future__ import annotations

import torch

from accel.quantization.method import LinearStats, QuantMethod
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs, quantize


class RTN(QuantMethod):
    """Min/max ranges, each weight rounded to its nearest grid point; no calibration."""

    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        return quantize(weight, args)
