"""The interface every quantization algorithm implements (built-in RTN and plugins alike).

The calibration pipeline (accel.quantization.calibration) drives a method block by block:
1. for each smoothing group (a norm or linear feeding some linears), `smooth` may return per-input-channel
   scales s; the pipeline folds them in: previous op's output channels / s, the linears' input columns * s,
   which leaves the block's function unchanged (AWQ, SmoothQuant);
2. each linear is then quantized by `quantize_weight` with the statistics of its (smoothed) inputs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs


@dataclass
class LinearStats:
    """What calibration observed at one linear layer's input.

    hessian: H = (1/N) sum_n x_n x_n^T over the N calibration tokens, [in, in] (GPTQ, SparseGPT).
    inputs: a sample of input rows [n, in] (AWQ's searches, SmoothQuant's ranges).
    channel_norms: ||X_j||_2 = sqrt(sum_n x_nj^2) over all N tokens, [in] (Wanda's importance |W_ij| ||X_j||_2).
    keep: the weight's sparsity mask [out, in] (True = kept) when a pruned model is quantized; a method that
    moves weights (GPTQ's error compensation) must give dropped weights the zero code, so zeros stay zeros.
    """

    hessian: torch.Tensor | None = None
    inputs: torch.Tensor | None = None
    num_tokens: int = 0
    channel_norms: torch.Tensor | None = None
    keep: torch.Tensor | None = None


@dataclass
class SmoothGroup:
    """Linears that read the same input X [n, in], produced by one previous op.

    weights: each linear's weight [out_i, in], by module name. act_absmax: max |X| per input channel over
    all calibration tokens [in]. inputs: a sample of X rows for searches.
    """

    name: str
    weights: dict[str, torch.Tensor]
    inputs: torch.Tensor
    act_absmax: torch.Tensor


class QuantMethod(ABC):
    """A weight-quantization algorithm: float weight (+ calibration stats) -> integer codes and scales."""

    requires_calibration: bool = False
    needs_hessian: bool = False  # the pipeline accumulates H = (1/N) sum x x^T only for methods that use it

    def smooth(self, group: SmoothGroup, args: WeightQuantArgs) -> torch.Tensor | None:
        """Per-input-channel scales s [in] (> 0) to migrate into the group's weights, or None (default)."""
        return None

    @abstractmethod
    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        """Quantize a [out, in] weight. Methods that need calibration raise ValueError if `stats` is None."""
