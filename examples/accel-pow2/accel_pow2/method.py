"""Round-to-nearest with power-of-two scales (the shared E8M0 scales of OCP microscaling formats).

s' = 2^ceil(log2 s) rounds RTN's min/max scale up, so the range never clips; for asymmetric grids the
zero point is recomputed for s' so the row minimum still maps to qmin.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel

from accel.quantization import LinearStats, QuantizedWeight, QuantMethod, WeightQuantArgs, quantize
from accel.quantization.weight_quant import quantize_with_qparams


class Pow2Config(BaseModel):
    """`up` never clips; `nearest` picks the closer power of two and may clip the extremes."""

    model_config = {"extra": "forbid"}
    rounding: Literal["up", "nearest"] = "up"


class Pow2RTN(QuantMethod):
    def __init__(self, config: Pow2Config) -> None:
        self.config = config

    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        rtn = quantize(weight, args)
        exponent = torch.log2(rtn.scale.double())
        exponent = exponent.ceil() if self.config.rounding == "up" else exponent.round()
        scale = torch.pow(2.0, exponent).to(rtn.scale.dtype)
        zero_point = None
        if rtn.zero_point is not None:
            # Row minimum under the old grid: (qmin - zp) * s; map it to qmin under the new scale.
            minimum = (args.qmin - rtn.zero_point.double()) * rtn.scale.double()
            zero_point = torch.clamp(args.qmin - torch.round(minimum / scale.double()), args.qmin, args.qmax)
            zero_point = zero_point.to(torch.int8)
        work = weight if weight.dtype == torch.float64 else weight.float()
        q = quantize_with_qparams(work, scale.to(work.dtype), zero_point, args)
        return QuantizedWeight(q=q, scale=scale, zero_point=zero_point, args=args)
