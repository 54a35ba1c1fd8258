"""Magnitude pruning is the format's selection over |W|, with exact zeros where it drops."""

import pytest
import torch

from accel.sparsity.hooks import accel_register_sparse_formats
from accel.sparsity.magnitude import Magnitude
from accel.sparsity.method import SparsityTarget
from accel.sparsity.structured import block_mask, nm_mask
from accel.sparsity.unstructured import unstructured_mask


def target(pattern: str, ratio: float, block_shape=(4, 4)) -> SparsityTarget:
    spec = next(f for f in accel_register_sparse_formats() if f.handles(pattern))
    return SparsityTarget(spec, pattern, ratio, block_shape)


@pytest.mark.parametrize(
    ("pattern", "ratio", "expected"),
    [
        ("2:4", 0.5, lambda s: nm_mask(s, 2, 4)),
        ("1:4", 0.75, lambda s: nm_mask(s, 1, 4)),
        ("unstructured", 0.3, lambda s: unstructured_mask(s, 0.3)),
        ("block", 0.5, lambda s: block_mask(s, 0.5, (4, 4))),
    ],
)
def test_magnitude_keeps_the_largest_weights_in_the_format(pattern, ratio, expected):
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    pruned = Magnitude().prune_weight(weight, target(pattern, ratio))
    assert torch.equal(pruned.mask, expected(weight.abs()))
    assert torch.equal(pruned.weight, weight * pruned.mask)
    assert target(pattern, ratio).violations(pruned.mask) == []


def test_target_knows_its_nm():
    assert target("4:8", 0.5).nm == (4, 8)
    assert target("unstructured", 0.5).nm is None
