"""Structured sparsity masks: N:M along the input dimension, and blocks.

A mask is a bool tensor shaped like the weight, True where the weight is kept. Masks are chosen from
importance scores (|W| for magnitude pruning, |W| * ||X||_2 for Wanda), so criteria and formats compose.
"""

from __future__ import annotations

import math

import torch

from accel.schema.quantization import parse_nm


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n highest scores in every m consecutive input columns of each row.

    An input dimension that is not a multiple of m ends in a partial group, which keeps at most n.
    """
    rows, cols = scores.shape
    groups = math.ceil(cols / m)
    padded = torch.full((rows, groups * m), -math.inf, dtype=torch.float32, device=scores.device)
    padded[:, :cols] = scores.float()
    grouped = padded.view(rows, groups, m)
    keep = torch.zeros_like(grouped, dtype=torch.bool)
    keep.scatter_(2, grouped.topk(n, dim=2).indices, True)
    return keep.view(rows, groups * m)[:, :cols]


def nm_violations(mask: torch.Tensor, n: int, m: int) -> list[str]:
    """Why a mask is not N:M: groups of m input columns that keep more than n."""
    rows, cols = mask.shape
    groups = math.ceil(cols / m)
    padded = torch.zeros((rows, groups * m), dtype=torch.int32, device=mask.device)
    padded[:, :cols] = mask.to(torch.int32)
    kept = padded.view(rows, groups, m).sum(dim=2)
    bad = (kept > n).nonzero()
    if len(bad) == 0:
        return []
    row, group = bad[0].tolist()
    first = f"row {row}, columns {group * m}..{group * m + m - 1}"
    return [f"{len(bad)} groups keep more than {n} of {m}; first at {first}"]


def block_mask(scores: torch.Tensor, ratio: float, block_shape: tuple[int, int]) -> torch.Tensor:
    """Drop the `ratio` fraction of blocks with the lowest summed score; edge blocks may be partial."""
    rows, cols = scores.shape
    br, bc = block_shape
    grid_r, grid_c = math.ceil(rows / br), math.ceil(cols / bc)
    padded = torch.zeros((grid_r * br, grid_c * bc), dtype=torch.float32, device=scores.device)
    padded[:rows, :cols] = scores.float()
    block_scores = padded.view(grid_r, br, grid_c, bc).sum(dim=(1, 3))  # [grid_r, grid_c]
    num_dropped = round(ratio * block_scores.numel())
    keep_blocks = torch.ones(block_scores.numel(), dtype=torch.bool, device=scores.device)
    if num_dropped:
        keep_blocks[block_scores.flatten().topk(num_dropped, largest=False).indices] = False
    keep = keep_blocks.view(grid_r, 1, grid_c, 1).expand(grid_r, br, grid_c, bc)
    return keep.reshape(grid_r * br, grid_c * bc)[:rows, :cols]


def block_violations(mask: torch.Tensor, block_shape: tuple[int, int]) -> list[str]:
    """Why a mask is not block-sparse: blocks that are partly kept."""
    rows, cols = mask.shape
    br, bc = block_shape
    grid_r, grid_c = math.ceil(rows / br), math.ceil(cols / bc)
    kept = torch.zeros((grid_r * br, grid_c * bc), dtype=torch.int32, device=mask.device)
    present = torch.zeros_like(kept)
    kept[:rows, :cols] = mask.to(torch.int32)
    present[:rows, :cols] = 1
    kept_sum = kept.view(grid_r, br, grid_c, bc).sum(dim=(1, 3))
    size = present.view(grid_r, br, grid_c, bc).sum(dim=(1, 3))
    mixed = ((kept_sum > 0) & (kept_sum < size)).nonzero()
    if len(mixed) == 0:
        return []
    r, c = mixed[0].tolist()
    return [f"{len(mixed)} blocks of {br}x{bc} are partly kept; first at rows {r * br}.., columns {c * bc}.."]


def select_nm(scores: torch.Tensor, pattern: str, ratio: float, block_shape: tuple[int, int]) -> torch.Tensor:
    n, m = _nm(pattern)
    return nm_mask(scores, n, m)


def check_nm(mask: torch.Tensor, pattern: str, block_shape: tuple[int, int]) -> list[str]:
    n, m = _nm(pattern)
    return nm_violations(mask, n, m)


def select_block(scores: torch.Tensor, pattern: str, ratio: float, block_shape: tuple[int, int]) -> torch.Tensor:
    return block_mask(scores, ratio, block_shape)


def check_block(mask: torch.Tensor, pattern: str, block_shape: tuple[int, int]) -> list[str]:
    return block_violations(mask, block_shape)


def _nm(pattern: str) -> tuple[int, int]:
    nm = parse_nm(pattern)
    if nm is None:
        raise ValueError(f"not an N:M pattern: {pattern!r}")
    return nm
