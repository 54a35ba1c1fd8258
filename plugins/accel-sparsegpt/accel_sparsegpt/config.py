"""SparseGPT's own settings (the pattern, ratio and block shape come in as a SparsityTarget)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class SparseGPTConfig(BaseModel):
    """dampening_frac: lambda = dampening_frac * mean(diag H) is added to H's diagonal before inversion (retried
    at 10x, 100x, 1000x if the Cholesky factorization fails).
    block_size: columns per lazy batch; for unstructured and block patterns also the span of each adaptive mask
    selection (rounded up to a multiple of the block width for 'block'). N:M masks are chosen per group of M.
    """

    model_config = {"extra": "forbid"}

    dampening_frac: float = Field(0.01, ge=0)
    block_size: int = Field(128, gt=0)
