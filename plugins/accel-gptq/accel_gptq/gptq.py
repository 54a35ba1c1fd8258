"""GPTQ (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers", arXiv:2210.17323).

A linear layer's weight W [out, in] is quantized to Q so that its output on calibration inputs X [N, in] moves
as little as possible: minimize ||W X^T - Q X^T||_F^2. The loss is a sum over rows w of (w - q) H (w - q)^T with
one Hessian for every row, H = 2 X^T X. The pipeline gives H = (1/N) sum_n x_n x_n^T; the constant factor
cancels in every formula below (only ratios of H^-1 entries appear).

Optimal Brain Quantization: quantizing column i to q_i and re-optimizing the columns F not yet quantized moves
them by
    delta_F = -(w_i - q_i) / [H_F^-1]_ii * (H_F^-1)_{i,F}
after which i leaves F by one step of Gaussian elimination on the inverse:
    H_{F-i}^-1 = H_F^-1 - (H_F^-1)_{:,i} (H_F^-1)_{i,:} / [H_F^-1]_ii.
GPTQ quantizes all rows in the same fixed column order, and the rows (H_F^-1)_{i,i:} / sqrt([H_F^-1]_ii) these
eliminations produce are the rows of the upper Cholesky factor U of H^-1 = U^T U. So with U computed once:
    err_i = (w_i - q_i) / U_ii,        W_{:,j} -= err_i U_ij   for every j > i.
Lazy batches: inside a block of B columns only the block's own columns are updated after each column; the
block's errors Err [out, B] then reach the rest at once, W_{:,end:} -= Err U_{block,end:} (the same result,
at matrix-product speed).

Dead inputs (H_ii = 0: the input channel was always zero) cannot change the output: W_{:,i} = 0, H_ii = 1.
Dampening: H + lambda I with lambda = dampening_frac * mean(diag H) keeps the factorization stable; if it fails
anyway, lambda is raised 10x at a time (DAMPENING_RETRIES times) before giving up.
act_order processes columns in order of decreasing H_ii. Grids are accel's min/max grids (compute_qparams):
per tensor and per channel from the whole weight up front; per group when the group's first column comes up,
from its columns' current error-updated values, so groups follow the processing order and act_order yields
a g_idx (the group of each original column). static_groups computes every group up front from the un-updated
weight in natural column order instead, keeping column i in group i // group_size.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from accel.quantization import LinearStats, QuantizedWeight, QuantMethod, WeightQuantArgs, quantize
from accel.quantization.weight_quant import compute_qparams, dequantize, quantize_with_qparams
from accel_gptq.config import GPTQConfig

logger = logging.getLogger(__name__)

DAMPENING_RETRIES = 3  # after a failed factorization: 10x, 100x, then 1000x the configured dampening


class GPTQ(QuantMethod):
    """Column-by-column quantization with inverse-Hessian error compensation; needs stats.hessian."""

    requires_calibration = True
    needs_hessian = True

    def __init__(self, config: GPTQConfig | None = None) -> None:
        self.config = config or GPTQConfig()

    def quantize_weight(
        self, weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None = None
    ) -> QuantizedWeight:
        hessian = _checked_hessian(weight, args, stats)
        dtype = torch.float64 if weight.dtype == torch.float64 else torch.float32
        device = weight.device
        W = weight.to(dtype, copy=True)
        H = hessian.to(device=device, dtype=dtype, copy=True)
        out_features, in_features = W.shape

        # Dead inputs: never active, so their weights are free; zero keeps them out of every group's range.
        dead = torch.diagonal(H) == 0
        H[dead, dead] = 1
        W[:, dead] = 0

        dynamic_groups = args.strategy == "group" and not self.config.static_groups
        if self.config.act_order:
            perm = torch.argsort(torch.diagonal(H), descending=True, stable=True)
        else:
            perm = torch.arange(in_features, device=device)

        # Grid of each processing-order column: column `col` uses scale[:, param_index[col]] (and zero_point's).
        if dynamic_groups:
            scale = W.new_empty(out_features, args.num_groups(in_features))
            zero_point = None if args.symmetric else torch.empty_like(scale, dtype=torch.int8)
            param_index = [col // args.group_size for col in range(in_features)]
        else:
            # Tensor, channel and static groups: min/max of the un-updated weight in natural order (RTN's ranges),
            # with the scales rounded to the weight's dtype so that the grid GPTQ rounds to is the one stored.
            fixed = quantize(W, args)
            scale, zero_point = fixed.scale.to(weight.dtype).to(dtype), fixed.zero_point
            param_index = (perm // args.group_size).tolist() if args.strategy == "group" else [0] * in_features

        W = W[:, perm]
        # A pruned weight's mask (prune then quantize): dropped weights take the zero code, and the error of
        # zeroing them is compensated like a rounding error (SparseGPT's joint step with the mask fixed).
        keep = None if stats.keep is None else stats.keep.to(device=device, dtype=torch.bool)[:, perm]
        U = inverse_hessian_factor(H[perm][:, perm], self.config.dampening_frac)
        # One column at a time: its [out, 1] (or [1, 1]) scale and zero point broadcast as per-channel params.
        column_args = replace(args, strategy="channel")
        codes = torch.empty(out_features, in_features, dtype=torch.int8, device=device)

        block_size = self.config.block_size
        for start in range(0, in_features, block_size):
            end = min(start + block_size, in_features)
            block = W[:, start:end].clone()
            errors = torch.zeros_like(block)
            for i in range(end - start):
                col = start + i
                k = param_index[col]
                if dynamic_groups and col % args.group_size == 0:
                    members = _current_columns(W, block, errors, U, start, col, min(col + args.group_size, in_features))
                    s, z = compute_qparams(members.amin(dim=1, keepdim=True), members.amax(dim=1, keepdim=True), args)
                    scale[:, k : k + 1] = s.to(weight.dtype).to(dtype)  # stored in the weight's dtype
                    if zero_point is not None and z is not None:
                        zero_point[:, k : k + 1] = z
                s = scale[:, k : k + 1]
                z = None if zero_point is None else zero_point[:, k : k + 1]
                w = block[:, i : i + 1]
                q = quantize_with_qparams(w, s, z, column_args)
                if keep is not None:
                    zero_code = torch.zeros_like(q) if z is None else z.expand_as(q).to(q.dtype)
                    q = torch.where(keep[:, col : col + 1], q, zero_code)
                codes[:, col : col + 1] = q
                # err_i = (w_i - q_i) / U_ii; the block's later columns absorb it now: W_j -= err_i U_ij.
                err = (w - dequantize(q, s, z, column_args, dtype)) / U[col, col]
                block[:, i + 1 :] -= err * U[col, col + 1 : end]
                errors[:, i : i + 1] = err
            # Lazy batch: the block's errors reach all later columns in one product, W_{:,end:} -= Err U_{block,end:}.
            W[:, end:] -= errors @ U[start:end, end:]

        natural_codes = torch.empty_like(codes)
        natural_codes[:, perm] = codes
        g_idx = None
        if dynamic_groups and self.config.act_order:
            g_idx = torch.empty(in_features, dtype=torch.int32, device=device)
            g_idx[perm] = (torch.arange(in_features, device=device) // args.group_size).to(torch.int32)
        return QuantizedWeight(
            q=natural_codes, scale=scale.to(weight.dtype), zero_point=zero_point, args=args, g_idx=g_idx
        )


def inverse_hessian_factor(hessian: torch.Tensor, dampening_frac: float) -> torch.Tensor:
    """U, upper triangular with U^T U = (H + lambda I)^-1, lambda = dampening_frac * mean(diag H).

    H + lambda I = L L^T (Cholesky), (L L^T)^-1 from L (cholesky_inverse), then its upper factor. A failed
    factorization (H not numerically positive definite) is retried with lambda 10x larger, DAMPENING_RETRIES times.
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
                logger.warning("GPTQ: Hessian not positive definite with dampening_frac %g; retrying with %g",
                               frac, frac * 10)
    raise ValueError(
        f"GPTQ: the Hessian is not positive definite even with dampening_frac {frac:g} "
        f"({DAMPENING_RETRIES} retries at 10x); calibrate on more tokens or raise dampening_frac"
    )


def _current_columns(
    W: torch.Tensor, block: torch.Tensor, errors: torch.Tensor, U: torch.Tensor, start: int, first: int, stop: int
) -> torch.Tensor:
    """Columns first..stop-1 (processing order) as they are now, with every error so far applied.

    Those inside the block are up to date; those past it still lack this block's errors, which are only
    propagated at its end: W_{:,j} - Err_{:, start:first} U_{start:first, j}.
    """
    end = start + block.shape[1]
    inside = block[:, first - start : min(stop, end) - start]
    if stop <= end:
        return inside
    pending = errors[:, : first - start] @ U[start:first, end:stop]
    return torch.cat([inside, W[:, end:stop] - pending], dim=1)


def _checked_hessian(weight: torch.Tensor, args: WeightQuantArgs, stats: LinearStats | None) -> torch.Tensor:
    """stats.hessian, after checking everything GPTQ needs is there and fits the weight."""
    if args.is_fp8:
        raise ValueError("GPTQ quantizes to integer grids; use method fp8/rtn for fp8")
    if stats is None:
        raise ValueError("GPTQ needs calibration statistics (LinearStats with a hessian), got stats=None")
    if stats.hessian is None:
        raise ValueError("GPTQ needs stats.hessian, H = (1/N) sum x x^T of the layer's inputs; the stats have none")
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    in_features = weight.shape[1]
    if tuple(stats.hessian.shape) != (in_features, in_features):
        raise ValueError(
            f"stats.hessian has shape {tuple(stats.hessian.shape)}, expected ({in_features}, {in_features})"
        )
    if not torch.isfinite(stats.hessian).all():
        raise ValueError("stats.hessian has non-finite entries")
    if stats.keep is not None and tuple(stats.keep.shape) != tuple(weight.shape):
        raise ValueError(f"stats.keep has shape {tuple(stats.keep.shape)}, expected the weight's {tuple(weight.shape)}")
    return stats.hessian
