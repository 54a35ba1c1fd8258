"""How close a draft is to its target on held-out text, measured the way speculative decoding sees it.

At each position, with p the target's next-token distribution and q the draft's (temperature 1):
- kl = KL(p || q) = sum_v p_v (log p_v - log q_v), averaged over positions (nats);
- top1_agreement = the fraction of positions where argmax q == argmax p: the chance a greedy draft token is
  accepted by greedy verification, given the same prefix;
- expected_acceptance = sum_v min(p_v, q_v) = 1 - TV(p, q), averaged: the chance a sampled draft token is
  accepted by speculative sampling at temperature 1 (Leviathan et al., 2023).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import PreTrainedModel


@dataclass(frozen=True)
class AgreementResult:
    kl: float
    top1_agreement: float
    expected_acceptance: float
    num_tokens: int


@torch.no_grad()
def compare_to_target(
    student: PreTrainedModel,
    target: PreTrainedModel,
    windows: torch.Tensor,
    batch_size: int = 4,
    progress: bool = False,
) -> AgreementResult:
    """The measures above over every position of `windows` [n, seq_len] (held-out token ids)."""
    device = next(target.parameters()).device
    kl = agree = overlap = 0.0
    count = 0
    for first in tqdm(range(0, len(windows), batch_size), disable=not progress, file=sys.stderr, desc="compare"):
        batch = windows[first : first + batch_size].to(device)  # [b, seq_len]
        log_p = F.log_softmax(target(input_ids=batch, use_cache=False).logits.float(), dim=-1)  # [b, L, V]
        log_q = F.log_softmax(student(input_ids=batch, use_cache=False).logits.float(), dim=-1)  # [b, L, V]
        kl += F.kl_div(log_q, log_p, log_target=True, reduction="sum").item()
        agree += (log_p.argmax(-1) == log_q.argmax(-1)).sum().item()
        overlap += torch.minimum(log_p, log_q).exp().sum().item()
        count += batch.numel()
    return AgreementResult(kl / count, agree / count, overlap / count, count)
