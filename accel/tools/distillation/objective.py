"""The distillation objective: KL(p_target || p_student) on softened distributions (Hinton et al., 2015).

With temperature tau, p = softmax(z_target / tau) and q = softmax(z_student / tau) over the vocabulary at each
position; the loss is tau^2 * mean over positions of sum_v p_v (log p_v - log q_v). The tau^2 keeps gradient
magnitudes comparable across temperatures (the softened gradients scale as 1/tau^2). Forward KL is
mass-covering: the student is pushed to put probability wherever the target does, which is what a draft needs
for its tokens to be accepted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def distillation_loss(
    student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Scalar tau^2 * mean KL(p_target || p_student) over every position of logits [..., V]."""
    if student_logits.shape != target_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and target logits "
                         f"{tuple(target_logits.shape)} must have the same shape")
    vocab = student_logits.shape[-1]
    log_q = F.log_softmax(student_logits.float().reshape(-1, vocab) / temperature, dim=-1)  # [N, V]
    log_p = F.log_softmax(target_logits.float().reshape(-1, vocab) / temperature, dim=-1)  # [N, V]
    kl = F.kl_div(log_q, log_p, log_target=True, reduction="sum") / log_q.shape[0]  # sum_v p (log p - log q)
    return kl * temperature**2
