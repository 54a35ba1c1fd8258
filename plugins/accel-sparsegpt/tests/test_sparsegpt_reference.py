"""SparseGPT against a column-by-column textbook OBS implementation, against magnitude pruning (identity Hessian:
the same; correlated inputs: a far smaller layer reconstruction error), and its edge cases."""

import pytest
import torch
from accel_sparsegpt.config import SparseGPTConfig
from accel_sparsegpt.sparsegpt import SparseGPT, inverse_hessian_factor

from accel.quantization import LinearStats
from accel.sparsity.hooks import accel_register_sparse_formats
from accel.sparsity.magnitude import Magnitude
from accel.sparsity.method import SparsityTarget

PATTERNS = [("2:4", 0.5), ("4:8", 0.5), ("unstructured", 0.5), ("block", 0.5)]


def target(pattern: str, ratio: float) -> SparsityTarget:
    spec = next(f for f in accel_register_sparse_formats() if f.handles(pattern))
    return SparsityTarget(spec, pattern, ratio, (8, 8))


def low_rank_inputs(tokens: int, in_features: int, rank: int, gen: torch.Generator) -> torch.Tensor:
    """Correlated inputs: a rank-`rank` signal plus a little noise (LLM activations have low effective rank)."""
    signal = torch.randn(tokens, rank, generator=gen) @ torch.randn(rank, in_features, generator=gen)
    return signal + 0.1 * torch.randn(tokens, in_features, generator=gen)


def stats_of(inputs: torch.Tensor) -> LinearStats:
    return LinearStats(hessian=inputs.T @ inputs / len(inputs), inputs=inputs, num_tokens=len(inputs))


def textbook(weight: torch.Tensor, hessian: torch.Tensor, target: SparsityTarget, span: int) -> tuple:
    """OBS one column at a time with the explicit inverse Hessian, eliminated one step per column:
        delta_F = -(w_i - w'_i) / [H_F^-1]_ii (H_F^-1)_{i,F}
        H_{F-i}^-1 = H_F^-1 - (H_F^-1)_{:,i} (H_F^-1)_{i,:} / [H_F^-1]_ii
    Masks are chosen where SparseGPT chooses them, with saliency w^2 / [H_{F_j}^-1]_jj."""
    W, H = weight.double().clone(), hessian.double().clone()
    n = H.shape[0]
    H += 0.01 * torch.diagonal(H).mean() * torch.eye(n, dtype=H.dtype)
    inverse = torch.linalg.inv(H)
    diag, step = [], inverse.clone()  # [H_{F_j}^-1]_jj: the diagonal just before column j is eliminated
    for j in range(n):
        diag.append(step[j, j])
        step = step - step[:, j : j + 1] @ step[j : j + 1, :] / step[j, j]
    diag = torch.stack(diag)
    nm = target.nm
    width = nm[1] if nm else span
    keep = torch.ones_like(W, dtype=torch.bool)
    for j in range(n):
        if j % width == 0:
            stop = min(j + width, n)
            keep[:, j:stop] = target.select(W[:, j:stop].square() / diag[j:stop])
        pruned = torch.where(keep[:, j], W[:, j], torch.zeros_like(W[:, j]))
        W -= ((W[:, j] - pruned) / inverse[j, j])[:, None] * inverse[j][None, :]
        W[:, j] = pruned
        inverse = inverse - inverse[:, j : j + 1] @ inverse[j : j + 1, :] / inverse[j, j]
    return W, keep


@pytest.mark.parametrize(("pattern", "ratio"), PATTERNS)
def test_blocked_cholesky_equals_the_textbook(pattern, ratio):
    gen = torch.Generator().manual_seed(0)
    inputs = low_rank_inputs(256, 48, 16, gen).double()
    weight = torch.randn(24, 48, generator=gen, dtype=torch.float64)
    method = SparseGPT(SparseGPTConfig(block_size=16))
    got = method.prune_weight(weight, target(pattern, ratio), stats_of(inputs))
    expected_weight, expected_mask = textbook(weight, stats_of(inputs).hessian, target(pattern, ratio),
                                              method.selection_span(target(pattern, ratio)))
    assert torch.equal(got.mask, expected_mask)
    torch.testing.assert_close(got.weight, expected_weight, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("block_size", [8, 128])
@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_identity_hessian_is_magnitude_pruning_for_nm(pattern, block_size):
    weight = torch.randn(32, 64, generator=torch.Generator().manual_seed(1))
    t = target(pattern, 0.5)
    got = SparseGPT(SparseGPTConfig(block_size=block_size)).prune_weight(weight, t, LinearStats(hessian=torch.eye(64)))
    expected = Magnitude().prune_weight(weight, t)
    assert torch.equal(got.mask, expected.mask)
    torch.testing.assert_close(got.weight, expected.weight, rtol=0, atol=1e-6)


def test_identity_hessian_is_magnitude_pruning_for_unstructured_in_one_block():
    weight = torch.randn(32, 96, generator=torch.Generator().manual_seed(2))
    t = target("unstructured", 0.6)
    got = SparseGPT(SparseGPTConfig(block_size=96)).prune_weight(weight, t, LinearStats(hessian=torch.eye(96)))
    expected = Magnitude().prune_weight(weight, t)
    assert torch.equal(got.mask, expected.mask)
    torch.testing.assert_close(got.weight, expected.weight, rtol=0, atol=1e-6)


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_reconstruction_error_well_below_magnitude(pattern):
    gen = torch.Generator().manual_seed(0)
    inputs = low_rank_inputs(2048, 256, 32, gen)
    weight = torch.randn(128, 256, generator=gen)
    t = target(pattern, 0.5)

    def error(pruned: torch.Tensor) -> float:
        return float(((weight - pruned) @ inputs.T).norm() / (weight @ inputs.T).norm())

    sparsegpt = error(SparseGPT().prune_weight(weight, t, stats_of(inputs)).weight)
    magnitude = error(Magnitude().prune_weight(weight, t).weight)
    print(f"{pattern}: ||WX - W'X|| / ||WX||: SparseGPT {sparsegpt:.3f}, magnitude {magnitude:.3f}")
    assert sparsegpt < 0.5 * magnitude


def test_dead_inputs_are_pruned_and_nothing_breaks():
    gen = torch.Generator().manual_seed(3)
    inputs = low_rank_inputs(256, 32, 8, gen)
    inputs[:, [3, 17]] = 0  # never active
    weight = torch.randn(16, 32, generator=gen)
    pruned = SparseGPT().prune_weight(weight, target("2:4", 0.5), stats_of(inputs))
    assert torch.isfinite(pruned.weight).all()
    assert not pruned.mask[:, [3, 17]].any() and (pruned.weight[:, [3, 17]] == 0).all()


def test_refuses_missing_or_bad_statistics():
    weight = torch.randn(8, 16)
    with pytest.raises(ValueError, match="stats.hessian"):
        SparseGPT().prune_weight(weight, target("2:4", 0.5), None)
    with pytest.raises(ValueError, match="expected \\(16, 16\\)"):
        SparseGPT().prune_weight(weight, target("2:4", 0.5), LinearStats(hessian=torch.eye(8)))
    with pytest.raises(ValueError, match="non-finite"):
        SparseGPT().prune_weight(weight, target("2:4", 0.5), LinearStats(hessian=torch.full((16, 16), float("nan"))))


def test_dampening_is_retried_then_refused():
    singular = torch.ones(8, 8, dtype=torch.float64)  # rank 1: needs dampening to factor
    upper = inverse_hessian_factor(singular, 0.01)
    torch.testing.assert_close(upper.T @ upper, torch.linalg.inv(singular + 0.01 * torch.eye(8, dtype=torch.float64)))
    negative = -torch.eye(8, dtype=torch.float64)
    with pytest.raises(ValueError, match="not positive definite"):
        inverse_hessian_factor(negative, 0.01)
