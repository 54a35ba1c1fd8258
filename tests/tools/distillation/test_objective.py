"""The loss is tau^2 * KL(p_target || p_student), averaged over positions."""

import pytest
import torch

from accel.tools.distillation import distillation_loss


def manual_kl(student: torch.Tensor, target: torch.Tensor, tau: float) -> torch.Tensor:
    p, q = torch.softmax(target / tau, -1), torch.softmax(student / tau, -1)
    return (p * (p.log() - q.log())).sum(-1).mean() * tau**2


@pytest.mark.parametrize("tau", [1.0, 2.0, 0.5])
def test_matches_the_definition(tau):
    generator = torch.Generator().manual_seed(0)
    student, target = torch.randn(2, 5, 11, generator=generator), torch.randn(2, 5, 11, generator=generator)
    torch.testing.assert_close(distillation_loss(student, target, tau), manual_kl(student, target, tau))


def test_zero_for_the_same_distribution_and_gradient_flows_to_the_student_only():
    target = torch.randn(3, 7)
    assert distillation_loss(target, target + 4.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant
    student = torch.randn(3, 7, requires_grad=True)
    distillation_loss(student, target).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        distillation_loss(torch.zeros(2, 5), torch.zeros(2, 6))
