"""Training lowers the loss, keeps frozen embeddings, and resumes exactly: 4 steps straight == 2 + resume 2."""

import math

import pytest
import torch

from accel.errors import ArtifactError
from accel.tools.distillation import DistillationConfig, make_student, train_student
from accel.tools.distillation.data import TokenWindows
from accel.tools.distillation.train import warmup_cosine

CONFIG = DistillationConfig(num_layers=2, steps=4, seq_len=16, batch_size=2, lr=1e-2, warmup_steps=1,
                            checkpoint_every=2, eval_tokens=16)


class CrashAt(TokenWindows):
    """Windows that raise at step `crash`: the process dying mid-run."""

    def __init__(self, windows: TokenWindows, crash: int) -> None:
        super().__init__(windows.tokens, windows.seq_len, windows.batch_size, windows.seed)
        self.crash = crash

    def batch(self, step: int) -> torch.Tensor:
        if step == self.crash:
            raise KeyboardInterrupt
        return super().batch(step)


def test_warmup_cosine():
    factor = warmup_cosine(2, 10, 0.1)
    assert [factor(0), factor(1), factor(2)] == [0.5, 1.0, 1.0]
    assert factor(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(10) == pytest.approx(0.1) and factor(12) == pytest.approx(0.1)


def test_resume_reproduces_the_uninterrupted_run(target, windows, tmp_path):
    straight = make_student(target, [0, 1])
    full = train_student(straight, target, windows, CONFIG, tmp_path / "straight", progress=False)
    interrupted = make_student(target, [0, 1])
    with pytest.raises(KeyboardInterrupt):
        train_student(interrupted, target, CrashAt(windows, 2), CONFIG, tmp_path / "resumed", progress=False)
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["step-00000002"]
    resumed = make_student(target, [0, 1])  # a fresh process: weights from the checkpoint, not from memory
    result = train_student(resumed, target, windows, CONFIG, tmp_path / "resumed", resume=True, progress=False)
    assert result.resumed_from == 2 and result.steps == 4
    assert result.losses == full.losses
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert not torch.equal(straight.model.layers[0].mlp.up_proj.weight, target.model.layers[0].mlp.up_proj.weight)


def test_training_lowers_the_loss_and_keeps_embeddings_frozen(target, windows, tmp_path):
    student = make_student(target, [0])
    embedding = student.model.embed_tokens.weight.clone()
    config = CONFIG.model_copy(update={"steps": 30, "checkpoint_every": 30})
    result = train_student(student, target, windows, config, tmp_path, progress=False)
    assert len(result.losses) == 30 and sum(result.losses[-5:]) < sum(result.losses[:5])
    assert torch.equal(student.model.embed_tokens.weight, embedding)


def test_checkpoints_are_not_overwritten_or_resumed_with_other_settings(target, windows, tmp_path):
    train_student(make_student(target, [0, 1]), target, windows, CONFIG, tmp_path, progress=False)
    with pytest.raises(ArtifactError, match="pass --resume to continue them"):
        train_student(make_student(target, [0, 1]), target, windows, CONFIG, tmp_path, progress=False)
    changed = CONFIG.model_copy(update={"lr": 1e-3, "checkpoint_every": 1})
    with pytest.raises(ArtifactError, match=r"lr: 0.01 -> 0.001\); resume with the same settings"):
        train_student(make_student(target, [0, 1]), target, windows, changed, tmp_path, resume=True, progress=False)
