"""The interface every quantization algorithm implements (built-in RTN and plugins alike)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs


@dataclass
class LinearStats:
    """What calibration observed at one linear layer's input.

    hessian: H = (1/N) sum_n x_n x_n^T over the N calibration tokens, [in, in] (GPTQ, SparseGPT).
    inputs: a sample of input rows [n, in] (AWQ's scale search, SmoothQuant's ranges).
    """

    hessian: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    num_tokens: int = 0


class QuantMethod(ABC):
    """A weight-quantization algorithm: float weight (+ calibration stats) -> integer codes and scales."""

    requires_calibration: bool = False

    @abstractmethod
    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        """Quantize a [out, in] weight. Methods that need calibration raise if `stats` is None."""
