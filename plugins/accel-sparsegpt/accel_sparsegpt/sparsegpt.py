"""SparseGPT (Frantar and Alistarh, 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot", arXiv:2301.00774).

A linear layer's weight W [out, in] is pruned to W' (zeros where the mask drops) so that its output on calibration
inputs X [N, in] moves as little as possible: minimize ||W X^T - W' X^T||_F^2, a sum over rows w of
(w - w') H (w - w')^T with one Hessian for every row, H = X^T X (the pipeline's H = (1/N) sum x x^T; the constant
cancels, only ratios of H^-1 entries appear).

Optimal Brain Surgeon: dropping weight i of a row (w_i -> 0) and re-optimizing the weights F not yet processed
moves them by
    delta_F = -w_i / [H_F^-1]_ii * (H_F^-1)_{i,F},        at a loss of  w_i^2 / [H_F^-1]_ii.
Processing the columns left to right, the rows (H_F^-1)_{i,i:} / sqrt([H_F^-1]_ii) of the successive inverses are
the rows of the upper Cholesky factor U of H^-1 = U^T U (as in GPTQ), so with U computed once, for column i:
    w'_i = w_i if kept else 0,     err_i = (w_i - w'_i) / U_ii,     W_{:,j} -= err_i U_ij   for j > i.
Lazy batches: inside a block of B columns (block_size, 128) only the block's columns are updated after each
column; the block's errors Err [out, B] then reach the rest at once, W_{:,end:} -= Err U_{block,end:}.

Adaptive mask selection: the mask is chosen from the weights as the updates have left them, with OBS saliency
w_ij^2 / U_jj^2 (the reference implementation's score), by the registered format's own rule:
- N:M: when a group of M columns comes up, the N most salient of the group in each row are kept;
- unstructured and block: when a lazy block comes up, the format selects over the block's columns (per row for
  unstructured, so every row of every block drops the ratio; whole blocks for 'block', whose width divides the
  selection span).
With H = I the updates vanish (U is diagonal) and the saliency orders weights by |w|: SparseGPT is magnitude
pruning (for unstructured, when one block spans the row).

Dead inputs (H_ii = 0: never active) cannot change the output: W_{:,i} = 0, H_ii = 1. Dampening: H + lambda I,
lambda = dampening_frac * mean(diag H), raised 10x at a time (DAMPENING_RETRIES times) if the factorization fails.
"""

from __future__ import annotations

import logging
import math

import torch

from accel.quantization import LinearStats
from accel.sparsity.method import PrunedWeight, PruningMethod, SparsityTarget
from accel_sparsegpt.config import SparseGPTConfig

logger = logging.getLogger(__name__)

DAMPENING_RETRIES = 3  # after a failed factorization: 10x, 100x, then 1000x the configured dampening


class SparseGPT(PruningMethod):
    """OBS pruning with inverse-Hessian weight updates and adaptive mask selection; needs stats.hessian."""

    requires_calibration = True
    needs_hessian = True

    def __init__(self, config: SparseGPTConfig | None = None) -> None:
        self.config = config or SparseGPTConfig()

    def selection_span(self, target: SparsityTarget) -> int:
        """Columns per lazy block: block_size, rounded up to a multiple of M (N:M) or of the block width."""
        unit = target.nm[1] if target.nm is not None else (target.block_shape[1] if target.pattern == "block" else 1)
        return math.ceil(self.config.block_size / unit) * unit

    def prune_weight(
        self, weight: torch.Tensor, target: SparsityTarget, stats: LinearStats | None = None
    ) -> PrunedWeight:
        hessian = _checked_hessian(weight, stats)
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        W = weight.to(dtype, copy=True)
        H = hessian.to(device=W.device, dtype=dtype, copy=True)
        in_features = W.shape[1]

        dead = torch.diagonal(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0
        U = inverse_hessian_factor(H, self.config.dampening_frac)
        keep = torch.ones_like(W, dtype=torch.bool)
        m = None if target.nm is None else target.nm[1]

        span = self.selection_span(target)
        for start in range(0, in_features, span):
            end = min(start + span, in_features)
            block = W[:, start:end].clone()  # [out, B], updated column by column
            d = torch.diagonal(U)[start:end]  # U_jj of the block's columns
            errors = torch.zeros_like(block)
            if m is None:
                keep[:, start:end] = target.select(block.square() / d.square())
            for i in range(end - start):
                col = start + i
                if m is not None and i % m == 0:
                    stop = min(i + m, end - start)
                    keep[:, col : start + stop] = target.select(block[:, i:stop].square() / d[i:stop].square())
                w = block[:, i]
                pruned = torch.where(keep[:, col], w, torch.zeros_like(w))
                # err_i = (w_i - w'_i) / U_ii; the block's later columns absorb it now: W_j -= err_i U_ij.
                err = (w - pruned) / U[col, col]
                block[:, i + 1 :] -= err[:, None] * U[col, col + 1 : end][None, :]
                block[:, i] = pruned
                errors[:, i] = err
            W[:, start:end] = block
            # Lazy batch: the block's errors reach all later columns in one product, W_{:,end:} -= Err U_{block,end:}.
            W[:, end:] -= errors @ U[start:end, end:]
        return PrunedWeight(weight=W.to(weight.dtype), mask=keep)


def inverse_hessian_factor(hessian: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """U, upper triangular with U^T U = (H + lambda I)^-1, lambda = dampening_frac * mean(diag H).

    H + lambda I = L L^T (Cholesky), (L L^T)^-1 from L (cholesky_inverse), then its upper factor. A failed
    factorization is retried with lambda 10x larger, DAMPENING_RETRIES times.
    """
    mean_diag = torch.diagonal(hessian).mean()
    identity = torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    for attempt in range(DAMPENING_RETRIES + 1):
        frac = dampening_frac * 10**attempt
        try:
            lower = torch.linalg.cholesky(hessian + frac * mean_diag * identity)
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        except torch.linalg.LinAlgError:
            if attempt < DAMPENING_RETRIES:
                logger.warning("SparseGPT: Hessian not positive definite with dampening_frac %g; retrying with %g",
                               frac, frac * 10)
    raise ValueError(
        f"SparseGPT: the Hessian is not positive definite even with dampening_frac {frac:g} "
        f"({DAMPENING_RETRIES} retries at 10x); calibrate on more tokens or raise dampening_frac"
    )


def _checked_hessian(weight: torch.Tensor, stats: LinearStats | None) -> torch.Tensor:
    """stats.hessian, after checking it is there and fits the weight."""
    if stats is None or stats.hessian is None:
        raise ValueError(
            "SparseGPT needs calibration statistics with stats.hessian, H = (1/N) sum x x^T of the layer's inputs"
        )
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(stats.hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"stats.hessian has shape {tuple(stats.hessian.shape)}, expected ({in_features}, {in_features})"
        )
    if not torch.isfinite(stats.hessian).all():
        raise ValueError("stats.hessian has non-finite entries")
    return stats.hessian
