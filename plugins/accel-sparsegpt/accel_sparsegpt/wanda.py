"""Wanda (Sun, Liu, Bair, Kolter, 2023, "A Simple and Effective Pruning Approach for Large Language Models",
arXiv:2306.11695): pruning by weights and activations, no weight update.

Importance of weight W_ij (output i, input j):  S_ij = |W_ij| * ||X_j||_2,  where ||X_j||_2 is the L2 norm of
input feature j over all N calibration tokens (LinearStats.channel_norms). Weights are compared within each output
row (the paper's per-output comparison group): the unstructured format drops the lowest `ratio` of every row, the
N:M format the lowest M - N of every M consecutive inputs of a row.
"""

from __future__ import annotations

import torch

from accel.quantization import LinearStats
from accel.sparsity.method import PrunedWeight, PruningMethod, SparsityTarget, scored


class Wanda(PruningMethod):
    """Score |W_ij| * ||X_j||_2 and keep the highest scores as the format allows; needs stats.channel_norms."""

    requires_calibration = True

    def prune_weight(
        self, weight: torch.Tensor, target: SparsityTarget, stats: LinearStats | None = None
    ) -> PrunedWeight:
        if stats is None or stats.channel_norms is None:
            raise ValueError("Wanda needs calibration statistics with stats.channel_norms, ||X_j||_2 per input")
        norms = stats.channel_norms
        if weight.ndim != 2 or tuple(norms.shape) != (weight.shape[1],):
            raise ValueError(
                f"stats.channel_norms has shape {tuple(norms.shape)}; expected one norm per input column of the "
                f"{tuple(weight.shape)} weight"
            )
        scores = weight.abs() * norms.to(device=weight.device, dtype=weight.dtype)[None, :]  # [out, in]
        return scored(weight, scores, target)
