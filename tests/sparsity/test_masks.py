"""N:M, block and unstructured masks against brute-force definitions."""

import itertools

import pytest
import torch

from accel.sparsity.structured import block_mask, block_violations, nm_mask, nm_violations
from accel.sparsity.unstructured import unstructured_mask


@pytest.mark.parametrize(("n", "m"), [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_the_top_n_of_every_m(n, m):
    scores = torch.rand(8, 6 * m + 3)  # a partial last group of 3
    mask = nm_mask(scores, n, m)
    for r in range(scores.shape[0]):
        for start in range(0, scores.shape[1], m):
            group, kept = scores[r, start : start + m], mask[r, start : start + m]
            expected = set(group.topk(min(n, len(group))).indices.tolist())
            assert set(kept.nonzero().flatten().tolist()) == expected
    assert nm_violations(mask, n, m) == []


def test_nm_violation_is_located():
    mask = nm_mask(torch.rand(4, 16), 2, 4)
    mask[2, 4:8] = True
    (message,) = nm_violations(mask, 2, 4)
    assert "row 2, columns 4..7" in message


def test_block_mask_drops_the_weakest_blocks():
    scores = torch.ones(8, 8)
    scores[:4, 4:] = 0.1  # the weakest 4x4 block
    mask = block_mask(scores, 0.25, (4, 4))
    assert not mask[:4, 4:].any() and mask.sum() == 48
    assert block_violations(mask, (4, 4)) == []
    mask[0, 4] = True
    assert "partly kept" in block_violations(mask, (4, 4))[0]


def test_block_mask_with_edge_blocks():
    mask = block_mask(torch.rand(10, 10), 0.5, (4, 4))  # a 3x3 grid with partial edges
    assert block_violations(mask, (4, 4)) == []


def test_unstructured_is_per_row_magnitude():
    scores = torch.rand(5, 20)
    mask = unstructured_mask(scores, 0.5)
    assert (mask.sum(dim=1) == 10).all()
    for r in range(5):
        assert scores[r][mask[r]].min() >= scores[r][~mask[r]].max()


def test_brute_force_nm_optimality_on_small_rows():
    # The N:M mask maximises the kept score: compare with every legal choice on one group.
    scores = torch.rand(1, 4)
    best = max(itertools.combinations(range(4), 2), key=lambda c: float(scores[0, list(c)].sum()))
    assert set(nm_mask(scores, 2, 4)[0].nonzero().flatten().tolist()) == set(best)
