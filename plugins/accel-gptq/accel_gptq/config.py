"""GPTQ's own settings (the profile's bits, symmetry and groups come in as WeightQuantArgs)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class GPTQConfig(BaseModel):
    """dampening_frac: lambda = dampening_frac * mean(diag H) is added to H's diagonal before inversion (retried
    at 10x, 100x, 1000x if the Cholesky factorization fails).
    block_size: columns per lazy batch; errors reach the columns after a block in one matrix product.
    act_order: quantize columns in order of decreasing diag(H) (the inputs with the most energy first); with
    groups the groups then follow that order and the result carries a g_idx.
    static_groups: compute every group's scale and zero point up front from the un-updated weight in natural
    column order, so column i stays in group i // group_size (no g_idx) even with act_order.
    """

    model_config = {"extra": "forbid"}

    dampening_frac: float = Field(0.01, ge=0)
    block_size: int = Field(128, gt=0)
    act_order: bool = False
    static_groups: bool = False
