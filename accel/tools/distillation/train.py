"""The training loop: the student learns the target's next-token distributions on windows of training text.

One step, for a batch x [B, L] of token ids:
  1. z_t = target(x).logits under no_grad, z_s = student(x).logits   [B, L, V]
  2. loss = tau^2 * mean KL(softmax(z_t / tau) || softmax(z_s / tau))  (objective.py)
  3. backward, clip the global gradient norm to max_grad_norm, AdamW step, scheduler step.
The learning rate is lr * warmup_cosine(step) (below). Every `checkpoint_every` steps, and after the last,
the full training state is checkpointed; `resume` restarts from the latest checkpoint and, because batch s
depends only on (seed, s), reproduces the uninterrupted run's weights exactly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel

from accel.errors import ArtifactError
from accel.tools.distillation.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from accel.tools.distillation.config import RESUMABLE_FIELDS, DistillationConfig
from accel.tools.distillation.data import TokenWindows
from accel.tools.distillation.objective import distillation_loss


@dataclass
class TrainResult:
    steps: int
    losses: list[float]
    resumed_from: int | None
    seconds: float

    @property
    def final_loss(self) -> float | None:
        return self.losses[-1] if self.losses else None


def warmup_cosine(warmup_steps: int, total_steps: int, min_ratio: float) -> Callable[[int], float]:
    """Multiplier of the base lr at step s: (s+1)/warmup during warmup, then a cosine from 1 to `min_ratio`
    reached at `total_steps`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _check_resumable(saved: dict, config: DistillationConfig, directory: Path) -> None:
    current = config.to_dict()
    changed = sorted(k for k in current.keys() | saved.keys()
                     if k not in RESUMABLE_FIELDS and current.get(k) != saved.get(k))
    if changed:
        details = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ArtifactError(f"{directory}: the checkpoints were trained with other settings ({details}); resume "
                            "with the same settings, or delete the checkpoints to start over")


def train_student(
    student: PreTrainedModel,
    target: PreTrainedModel,
    windows: TokenWindows,
    config: DistillationConfig,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `student` in place for config.steps steps (see the module docstring); the target is left frozen."""
    target.eval().requires_grad_(False)
    if not config.train_embeddings:
        for embedding in (student.get_input_embeddings(), student.get_output_embeddings()):
            embedding.weight.requires_grad_(False)

    def loss_of(batch: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target_logits = target(input_ids=batch, use_cache=False).logits  # [B, L, V]
        student_logits = student(input_ids=batch, use_cache=False).logits  # [B, L, V]
        return distillation_loss(student_logits, target_logits, config.temperature)

    return train_loop(student, loss_of, windows, config, checkpoint_dir, resume=resume, progress=progress)


def train_loop(
    module: nn.Module,
    loss_of: Callable[[torch.Tensor], torch.Tensor],
    windows: TokenWindows,
    config: DistillationConfig,
    checkpoint_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train `module`'s parameters that require grad on loss_of(batch) for config.steps steps (AdamW, clipped
    gradients, warmup + cosine), checkpointed and resumable (module docstring)."""
    start = time.perf_counter()
    latest = latest_checkpoint(checkpoint_dir)
    if latest is not None and not resume:
        raise ArtifactError(f"{checkpoint_dir} holds checkpoints ({latest.name}); pass --resume to continue them, "
                            "or delete the directory to start over")
    module.train()
    parameters = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps, config.min_lr_ratio)
    )
    step, losses, resumed_from = 0, [], None
    if latest is not None:
        restored = load_checkpoint(latest, module, optimizer, scheduler)
        _check_resumable(restored["state"]["config"], config, checkpoint_dir)
        step, losses, resumed_from = restored["step"], restored["state"]["losses"], restored["step"]
    device = next(module.parameters()).device
    bar = tqdm(total=config.steps, initial=step, disable=not progress, file=sys.stderr, desc="distill", unit="step")
    while step < config.steps:
        loss = loss_of(windows.batch(step).to(device))  # batch [B, L]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(checkpoint_dir, step, module, optimizer, scheduler,
                            {"losses": losses, "config": config.to_dict()})
    bar.close()
    module.eval()
    return TrainResult(step, losses, resumed_from, time.perf_counter() - start)
