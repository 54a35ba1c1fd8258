"""Training Medusa draft heads (accel.speculative.medusa) on the target's logits: self-distillation.

For a window x [B, L] of training text, the frozen target gives its final-normed hidden states h [B, L, H] and
logits z = lm_head(h). Head i at position t drafts token t + 2 + i, the token the target's distribution
z_{t+1+i} predicts, so its loss is KL(softmax(z_{t+1+i}) || softmax(head_i(h_t))) over t < L - 1 - i, and the
heads' loss is sum_i 0.8^i loss_i (Medusa's decay: later heads are less often reached). Only the heads train;
the loop (checkpoints, --resume) is train.train_loop's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.speculative.medusa import MedusaHeads, save_heads
from accel.tools.distillation.config import DistillationConfig
from accel.tools.distillation.objective import distillation_loss
from accel.tools.distillation.pipeline import default_checkpoint_dir, training_text
from accel.tools.distillation.train import train_loop

__all__ = ["HEAD_DECAY", "HeadsReport", "distill_heads", "head_agreement", "heads_loss"]

HEAD_DECAY = 0.8


def _hidden_and_logits(target: PreTrainedModel, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final-normed hidden states [B, L, H] and logits [B, L, V] for token ids [B, L]."""
    hidden = target.get_decoder()(input_ids=batch, use_cache=False).last_hidden_state
    return hidden, target.get_output_embeddings()(hidden)


def heads_loss(
    heads: MedusaHeads, hidden: torch.Tensor, target_logits: torch.Tensor, lm_head: torch.nn.Module, tau: float
) -> torch.Tensor:
    """sum_i 0.8^i tau^2 KL(p_target(t + 1 + i) || p_head_i(t)) (module docstring); hidden [B, L, H]."""
    length = hidden.shape[1]
    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(min(heads.num_heads, length - 1)):
        features = heads.features(hidden[:, : length - 1 - i])[..., i, :]  # [B, L-1-i, H]
        total = total + HEAD_DECAY**i * distillation_loss(lm_head(features), target_logits[:, 1 + i :], tau)
    return total


@torch.no_grad()
def head_agreement(
    heads: MedusaHeads, target: PreTrainedModel, windows: torch.Tensor, batch_size: int = 4
) -> list[float]:
    """Per head i, the fraction of positions t where head i's argmax at t equals the target's argmax at t + 1 + i
    over held-out windows [n, L]: the chance greedy verification accepts that head's draft when the earlier
    drafts were right."""
    device = next(target.parameters()).device
    lm_head = target.get_output_embeddings()
    agree = [0] * heads.num_heads
    count = [0] * heads.num_heads
    for first in range(0, len(windows), batch_size):
        hidden, logits = _hidden_and_logits(target, windows[first : first + batch_size].to(device))
        choice = logits.argmax(-1)  # [b, L]
        length = hidden.shape[1]
        for i in range(min(heads.num_heads, length - 1)):
            drafted = lm_head(heads.features(hidden[:, : length - 1 - i])[..., i, :]).argmax(-1)
            agree[i] += int((drafted == choice[:, 1 + i :]).sum())
            count[i] += drafted.numel()
    return [a / c if c else 0.0 for a, c in zip(agree, count, strict=True)]


@dataclass
class HeadsReport:
    """What distill_heads did and measured; `to_dict` is also stored in the heads' config."""

    target: str
    num_heads: int
    config: DistillationConfig
    before: list[float]
    after: list[float]
    steps: int
    final_loss: float | None
    resumed_from: int | None
    train_seconds: float
    out: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target, "num_heads": self.num_heads, "config": self.config.to_dict(),
            "heldout_top1_agreement_before": self.before, "heldout_top1_agreement_after": self.after,
            "steps": self.steps, "final_loss": self.final_loss, "resumed_from": self.resumed_from,
            "train_seconds": self.train_seconds, "out": self.out, "seconds": self.seconds,
        }


def distill_heads(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: DistillationConfig,
    num_heads: int,
    *,
    source: str,
    out: Path,
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: bool = True,
) -> HeadsReport:
    """Train `num_heads` Medusa heads for the loaded target on config's training text and write them to `out`."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    target.eval().requires_grad_(False)
    checkpoint_dir = checkpoint_dir or default_checkpoint_dir(out)
    parameter = next(target.parameters())
    heads = MedusaHeads(target.config.hidden_size, num_heads).to(parameter.device)
    heldout, windows = training_text(target, tokenizer, config, checkpoint_dir)
    before = head_agreement(heads, target, heldout)
    lm_head = target.get_output_embeddings()

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden, logits = _hidden_and_logits(target, batch)
        return heads_loss(heads, hidden, logits, lm_head, config.temperature)

    trained = train_loop(heads, loss_of, windows, config, checkpoint_dir, resume=resume, progress=progress)
    after = head_agreement(heads, target, heldout)
    report = HeadsReport(
        target=source, num_heads=num_heads, config=config, before=before, after=after, steps=trained.steps,
        final_loss=trained.final_loss, resumed_from=trained.resumed_from,
        train_seconds=trained.seconds, out=str(out), seconds=time.perf_counter() - start,
    )
    save_heads(heads, out, report.to_dict())
    return report
