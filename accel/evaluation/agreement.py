"""Perplexity together with top-1 agreement against a reference model's predictions.

Top-1 agreement = the fraction of predicted positions where argmax p_model == argmax p_reference: how often
a compressed model would pick the same next token as the full-precision one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel

from accel.evaluation.perplexity import PerplexityResult


@dataclass(frozen=True)
class QualityResult:
    """Perplexity, the model's own top-1 predictions [n, seq_len - 1], and agreement with a reference."""

    perplexity: PerplexityResult
    top1: torch.Tensor
    top1_agreement: float | None


def evaluate_quality(
    model: PreTrainedModel,
    windows: torch.Tensor,
    reference_top1: torch.Tensor | None = None,
    batch_size: int = 4,
    progress: bool = False,
) -> QualityResult:
    """One pass over `windows` [n, seq_len]: NLL as in accel.evaluation.perplexity plus argmax per position."""
    device = next(model.parameters()).device
    total_nll, predictions = 0.0, []
    start = time.perf_counter()
    with torch.inference_mode():
        for first in tqdm(range(0, len(windows), batch_size), disable=not progress, file=sys.stderr, desc="eval"):
            batch = windows[first : first + batch_size].to(device)  # [b, seq_len]
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()  # [b, seq_len - 1, vocab]
            total_nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1),
                                         reduction="sum").item()
            predictions.append(logits.argmax(dim=-1).cpu())
    top1 = torch.cat(predictions)  # [n, seq_len - 1]
    num_tokens = top1.numel()
    nll = total_nll / num_tokens
    result = PerplexityResult(math.exp(nll), nll, num_tokens, len(windows), windows.shape[1],
                              time.perf_counter() - start)
    agreement = None if reference_top1 is None else float((top1 == reference_top1).float().mean())
    return QualityResult(result, top1, agreement)
