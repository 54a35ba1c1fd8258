"""The interface every pruning criterion implements (built-in magnitude and plugins alike).

A criterion turns a weight W [out, in] (and, if it needs them, the statistics calibration observed at the layer's
input) into a mask in a registered sparse format. Magnitude and Wanda score each weight and let the format keep
the highest scores; SparseGPT also updates the weights it keeps so the layer's output moves as little as possible.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from accel.plugins.records import SparseFormatSpec
from accel.quantization.method import LinearStats
from accel.schema.quantization import parse_nm


@dataclass(frozen=True)
class SparsityTarget:
    """The mask one weight must get: a registered format, its pattern ('2:4', 'block', 'unstructured'), the
    fraction of weights to drop, and the block shape of 'block'."""

    format: SparseFormatSpec
    pattern: str
    ratio: float
    block_shape: tuple[int, int] = (16, 16)

    def select(self, scores: torch.Tensor) -> torch.Tensor:
        """Bool mask shaped like `scores` (True = kept) that keeps the highest scores the format allows."""
        return self.format.select(scores, self.pattern, self.ratio, self.block_shape)

    def violations(self, mask: torch.Tensor) -> list[str]:
        return self.format.violations(mask, self.pattern, self.block_shape)

    @property
    def nm(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        return parse_nm(self.pattern)


@dataclass
class PrunedWeight:
    """The pruned weight [out, in] (exactly 0 where dropped) and its mask (True = kept)."""

    weight: torch.Tensor
    mask: torch.Tensor


class PruningMethod(ABC):
    """A pruning criterion: weight (+ calibration stats) -> a mask in the target's format, and the kept weights."""

    requires_calibration: bool = False
    needs_hessian: bool = False  # the pipeline accumulates H = (1/N) sum x x^T only for methods that use it

    @abstractmethod
    def prune_weight(
        self, weight: torch.Tensor, target: SparsityTarget, stats: LinearStats | None = None
    ) -> PrunedWeight:
        """Prune a [out, in] weight. Methods that need calibration raise ValueError if `stats` is None."""


def scored(weight: torch.Tensor, scores: torch.Tensor, target: SparsityTarget) -> PrunedWeight:
    """Keep what the target's format selects from `scores`; the kept weights are unchanged."""
    mask = target.select(scores)
    return PrunedWeight(weight=weight * mask, mask=mask)
