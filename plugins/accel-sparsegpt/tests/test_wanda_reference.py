"""Wanda's mask against a direct numpy computation of the paper's definition, with statistics from accel's
calibration observer: S_ij = |W_ij| * ||X_j||_2, compared within each output row (unstructured) or within each
group of M consecutive inputs of a row (N:M)."""

import numpy as np
import pytest
import torch
from accel_sparsegpt.wanda import Wanda

from accel.quantization.calibration import InputObserver
from accel.sparsity.hooks import accel_register_sparse_formats
from accel.sparsity.method import SparsityTarget


def target(pattern: str, ratio: float) -> SparsityTarget:
    spec = next(f for f in accel_register_sparse_formats() if f.handles(pattern))
    return SparsityTarget(spec, pattern, ratio)


def paper_mask(weight: np.ndarray, inputs: np.ndarray, pattern: str, ratio: float) -> np.ndarray:
    """The paper's Algorithm (PyTorch listing) in numpy: metric = |W| * ||X||_2 per input column; sort each
    comparison group and prune the lowest."""
    metric = np.abs(weight) * np.sqrt((inputs.astype(np.float64) ** 2).sum(axis=0))[None, :]
    keep = np.ones_like(weight, dtype=bool)
    if pattern == "unstructured":
        dropped = round(ratio * weight.shape[1])
        for row in range(weight.shape[0]):
            keep[row, np.argsort(metric[row], kind="stable")[:dropped]] = False
        return keep
    n, m = map(int, pattern.split(":"))
    for row in range(weight.shape[0]):
        for start in range(0, weight.shape[1], m):
            group = metric[row, start : start + m]
            keep[row, start + np.argsort(group, kind="stable")[: m - n]] = False
    return keep


@pytest.mark.parametrize(("pattern", "ratio"), [("unstructured", 0.5), ("unstructured", 0.7), ("2:4", 0.5),
                                                 ("4:8", 0.5)])
def test_wanda_mask_is_the_papers(pattern, ratio):
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(300, 96, generator=gen) * (10 ** torch.linspace(-1, 1, 96))  # channels of varied scale
    weight = torch.randn(40, 96, generator=gen)
    observer = InputObserver(96, hessian=False, max_rows=64, expected_batches=3)
    for batch in inputs.reshape(3, 100, 96):  # the pipeline's observer, fed in batches
        observer.update(batch)
    pruned = Wanda().prune_weight(weight, target(pattern, ratio), observer.stats())
    expected = paper_mask(weight.numpy(), inputs.numpy(), pattern, ratio)
    np.testing.assert_array_equal(pruned.mask.numpy(), expected)
    torch.testing.assert_close(pruned.weight, weight * torch.from_numpy(expected))


def test_wanda_differs_from_magnitude_when_inputs_differ_in_scale():
    weight = torch.tensor([[1.0, 0.5]])
    norms = torch.tensor([0.1, 10.0])  # the small weight sees a large input
    from accel.quantization import LinearStats

    pruned = Wanda().prune_weight(weight, target("unstructured", 0.5), LinearStats(channel_norms=norms))
    assert pruned.mask.tolist() == [[False, True]]


def test_wanda_refuses_missing_or_misshapen_norms():
    from accel.quantization import LinearStats

    with pytest.raises(ValueError, match="channel_norms"):
        Wanda().prune_weight(torch.randn(4, 8), target("2:4", 0.5), LinearStats())
    with pytest.raises(ValueError, match="one norm per input column"):
        Wanda().prune_weight(torch.randn(4, 8), target("2:4", 0.5), LinearStats(channel_norms=torch.ones(4)))
