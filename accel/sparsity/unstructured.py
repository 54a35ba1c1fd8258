"""Unstructured sparsity: keep the highest-scoring weights of each output row at a target ratio.

Per-row selection is Wanda's finding (comparing weights within an output row beats a whole-layer
threshold for LLMs); with |W| as the score it is magnitude pruning.
"""

from __future__ import annotations

import torch


def unstructured_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Drop round(ratio * in) lowest scores in every row; True = kept."""
    rows, cols = scores.shape
    dropped = round(ratio * cols)
    keep = torch.ones((rows, cols), dtype=torch.bool, device=scores.device)
    if dropped:
        keep.scatter_(1, scores.float().topk(dropped, dim=1, largest=False).indices, False)
    return keep


def select_unstructured(
    scores: torch.Tensor, pattern: str, ratio: float, block_shape: tuple[int, int]
) -> torch.Tensor:
    return unstructured_mask(scores, ratio)


def check_unstructured(mask: torch.Tensor, pattern: str, block_shape: tuple[int, int]) -> list[str]:
    if mask.dtype != torch.bool or mask.ndim != 2:
        return [f"an unstructured mask is a 2-D bool tensor, got {mask.dtype} with shape {tuple(mask.shape)}"]
    return []
