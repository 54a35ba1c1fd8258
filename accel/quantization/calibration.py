"""Calibration: the token samples a method sees, and the statistics observed at each linear layer's input.

Sources: the bundled corpus's calibration split (default), a .txt or .jsonl file, or a `datasets` name.
An InputObserver accumulates, over every calibration token x (a row of the layer input):
    H = (1/N) sum x x^T   (only when a method needs it: GPTQ, SparseGPT),   max |x_j|,   sum x_j^2 (Wanda's
    ||X_j||_2),   and a uniform sample of rows.
"""

from __future__ import annotations

import math

import torch
from transformers import PreTrainedTokenizerBase

from accel.data.corpus import calibration_samples, load_text_source, tokenize
from accel.errors import CorpusError
from accel.quantization.method import LinearStats
from accel.schema import QuantizationProfile


def calibration_data(tokenizer: PreTrainedTokenizerBase, profile: QuantizationProfile, seed: int = 0) -> torch.Tensor:
    """[calibration_samples, calibration_sequence_length] token ids from the profile's dataset."""
    n, seq_len = profile.calibration_samples, profile.calibration_sequence_length
    if profile.calibration_dataset == "bundled":
        return calibration_samples(tokenizer, n, seq_len, seed=seed)
    tokens = tokenize(tokenizer, load_text_source(profile.calibration_dataset))
    if tokens.numel() < seq_len:
        raise CorpusError(
            f"calibration_dataset {profile.calibration_dataset!r} has {tokens.numel()} tokens, fewer than one "
            f"sample of calibration_sequence_length {seq_len}; lower it or give more text"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (n,), generator=generator)
    return tokens[starts[:, None] + torch.arange(seq_len)]  # [n, seq_len]


class InputObserver:
    """Statistics of one linear layer's input over all calibration tokens."""

    def __init__(self, in_features: int, *, hessian: bool, max_rows: int, expected_batches: int) -> None:
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float64) if hessian else None
        self.absmax = torch.zeros(in_features, dtype=torch.float32)
        self.square_sum = torch.zeros(in_features, dtype=torch.float64)
        self.rows: list[torch.Tensor] = []
        self.rows_per_batch = math.ceil(max_rows / max(expected_batches, 1))
        self.max_rows = max_rows
        self.count = 0
        self.generator = torch.Generator().manual_seed(0)

    def update(self, x: torch.Tensor) -> None:
        rows = x.detach().reshape(-1, x.shape[-1]).float()  # [tokens, in]
        self.count += rows.shape[0]
        self.absmax = torch.maximum(self.absmax, rows.abs().amax(dim=0))
        self.square_sum += rows.square().sum(dim=0).double()
        if self.hessian is not None:
            self.hessian += (rows.T @ rows).double()  # sum x x^T; float32 matmul, float64 accumulation
        take = torch.randperm(rows.shape[0], generator=self.generator)[: self.rows_per_batch]
        self.rows.append(rows[take].clone())

    def stats(self) -> LinearStats:
        """H = (1/N) sum x x^T (float32), a sample of at most max_rows input rows, N, ||X_j||_2."""
        hessian = None if self.hessian is None else (self.hessian / max(self.count, 1)).float()
        inputs = torch.cat(self.rows)[: self.max_rows] if self.rows else None
        norms = self.square_sum.sqrt().float()
        return LinearStats(hessian=hessian, inputs=inputs, num_tokens=self.count, channel_norms=norms)


def scale_stats(stats: LinearStats, s: torch.Tensor) -> LinearStats:
    """Statistics of X diag(1/s) from those of X: what the linear sees after smoothing folds s in."""
    inv = (1.0 / s).float()
    hessian = None if stats.hessian is None else stats.hessian * inv[:, None] * inv[None, :]
    inputs = None if stats.inputs is None else stats.inputs * inv
    norms = None if stats.channel_norms is None else stats.channel_norms * inv
    return LinearStats(hessian=hessian, inputs=inputs, num_tokens=stats.num_tokens, channel_norms=norms)
