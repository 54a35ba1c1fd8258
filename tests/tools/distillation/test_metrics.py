"""Held-out agreement: perfect for the target itself, and consistent with its definitions otherwise."""

import pytest
import torch

from accel.tools.distillation import compare_to_target, make_student


def test_the_target_agrees_with_itself(target):
    windows = torch.randint(0, 64, (3, 12), generator=torch.Generator().manual_seed(0))
    result = compare_to_target(make_student(target, [0, 1, 2, 3]), target, windows, batch_size=2)
    assert result.kl == pytest.approx(0.0, abs=1e-5)
    assert result.top1_agreement == 1.0 and result.expected_acceptance == pytest.approx(1.0, abs=1e-5)
    assert result.num_tokens == 36


@torch.no_grad()
def test_a_truncated_student_against_the_definitions(target):
    windows = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    student = make_student(target, [0])
    result = compare_to_target(student, target, windows)
    p = torch.softmax(target(input_ids=windows).logits, -1)
    q = torch.softmax(student(input_ids=windows).logits, -1)
    assert result.kl == pytest.approx(float((p * (p.log() - q.log())).sum(-1).mean()), rel=1e-4)
    assert result.top1_agreement == pytest.approx(float((p.argmax(-1) == q.argmax(-1)).float().mean()))
    assert result.expected_acceptance == pytest.approx(float(torch.minimum(p, q).sum(-1).mean()), rel=1e-4)
    assert result.kl > 0 and result.expected_acceptance < 1
