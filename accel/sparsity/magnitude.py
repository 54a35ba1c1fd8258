"""Magnitude pruning: drop the weights of smallest |W_ij|, as the sparse format allows (the baseline)."""

from __future__ import annotations

import torch

from accel.quantization.method import LinearStats
from accel.sparsity.method import PrunedWeight, PruningMethod, SparsityTarget, scored


class Magnitude(PruningMethod):
    """Score |W_ij|; no calibration. With the unstructured format the comparison group is each output row."""

    def prune_weight(
        self, weight: torch.Tensor, target: SparsityTarget, stats: LinearStats | None = None
    ) -> PrunedWeight:
        return scored(weight, weight.abs(), target)
