"""Perplexity of a causal LM over fixed token windows: exp of the mean next-token negative log-likelihood."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.data.corpus import evaluation_windows

__all__ = ["PerplexityResult", "evaluate_perplexity", "perplexity"]


@dataclass(frozen=True)
class PerplexityResult:
    """perplexity = exp(nll); nll is the mean over all num_tokens predicted tokens, seq_len - 1 per window."""

    perplexity: float
    nll: float
    num_tokens: int
    num_windows: int
    seq_len: int
    seconds: float


def perplexity(
    model: PreTrainedModel, windows: torch.Tensor, batch_size: int = 4, progress: bool = False
) -> PerplexityResult:
    """Perplexity over `windows` [n, seq_len]; each window is scored on its own (no context carried over).

    NLL = -(1/N) * sum over windows w and positions t >= 1 of log p(x[w, t] | x[w, :t]),
    N = n * (seq_len - 1); the log-softmax runs in float32 whatever the model's dtype.
    """
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(f"windows must be [n >= 1, seq_len >= 2] token ids, got shape {tuple(windows.shape)}")
    device = next(model.parameters()).device
    num_windows, seq_len = windows.shape
    total_nll = 0.0  # a Python float (double) accumulates the per-batch sums without float32 drift
    start = time.perf_counter()
    with torch.inference_mode():
        for first in tqdm(
            range(0, num_windows, batch_size), disable=not progress, file=sys.stderr, unit="batch", desc="ppl"
        ):
            batch = windows[first : first + batch_size].to(device)  # [b, seq_len]
            logits = model(input_ids=batch, use_cache=False).logits  # [b, seq_len, vocab]
            # position t predicts token t + 1: logits[:, :-1] against batch[:, 1:]
            predicted = logits[:, :-1].float().reshape(-1, logits.shape[-1])  # [b * (seq_len - 1), vocab]
            targets = batch[:, 1:].reshape(-1)  # [b * (seq_len - 1)]
            total_nll += F.cross_entropy(predicted, targets, reduction="sum").item()
    num_tokens = num_windows * (seq_len - 1)
    nll = total_nll / num_tokens
    return PerplexityResult(
        perplexity=math.exp(nll),
        nll=nll,
        num_tokens=num_tokens,
        num_windows=num_windows,
        seq_len=seq_len,
        seconds=time.perf_counter() - start,
    )


def evaluate_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    seq_len: int = 512,
    max_tokens: int | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> PerplexityResult:
    """Perplexity on the bundled corpus's evaluation split, in consecutive windows of `seq_len` tokens."""
    windows = evaluation_windows(tokenizer, seq_len, max_tokens=max_tokens)
    return perplexity(model, windows, batch_size=batch_size, progress=progress)
