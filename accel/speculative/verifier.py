"""Exact verification of drafted tokens: the target model keeps its own output distribution.

Notation: the target forward over [last accepted token, d_1 .. d_k] gives k+1 rows of logits; row i is the
target's distribution p_i for the token after d_1 .. d_i. The draft proposed d_{i+1} from its distribution q_i.

- Greedy (temperature 0): accept d_{i+1} while d_{i+1} = argmax p_i; at the first mismatch emit argmax p_i
  instead; after k acceptances emit the bonus argmax p_k. The output is plain greedy decoding, token for token.
- Sampling (Leviathan et al. 2023, Chen et al. 2023): accept x = d_{i+1} with probability min(1, p(x) / q(x));
  on the first rejection emit y ~ norm(max(0, p - q)) and stop; after k acceptances emit a bonus y ~ p_k.
  The emitted token is distributed as p exactly:
      P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) r(y),   r = max(0, p - q) / sum(max(0, p - q)),
      q(y) min(1, p(y)/q(y)) = min(q(y), p(y)),
      P(reject) = 1 - sum_x min(q(x), p(x)) = sum_x max(0, p(x) - q(x)),
  so P(emit y) = min(q(y), p(y)) + max(0, p(y) - q(y)) = p(y).
- Deterministic drafters (n-gram, argmax) have no q; they are verified with the one-hot q = e_x, which is
  the rule above with q(x) = 1: accept x with probability p(x); on rejection r = p with x removed,
  renormalised.

All probabilities are float32, and temperature, top-k and top-p are applied identically to p and q
(`logits_to_probs`), so both sides of the ratio describe the same sampling procedure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    """How a token is drawn from logits. temperature 0 is greedy (argmax); top_k 0 and top_p 1 are off.
    `seed` seeds the generator a request creates when the caller passes none."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self) -> torch.Generator:
        """A CPU generator seeded with `seed`, or from torch's global RNG when seed is None."""
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def logits_to_probs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Sampling distribution [..., V] in float32: softmax(logits / T), then top-k, then top-p.

    Greedy (T = 0) gives the one-hot of argmax. top-k keeps the k most likely tokens; top-p keeps the
    smallest most-likely-first set whose mass reaches top_p (the most likely token always stays). Each
    filter renormalises what it keeps.
    """
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if 0 < params.top_k < probs.shape[-1]:
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, probs.topk(params.top_k, -1).indices, True)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    if params.top_p < 1:
        ordered, order = probs.sort(-1, descending=True)
        mass_before = ordered.cumsum(-1) - ordered  # mass of the strictly more likely tokens
        keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(-1, order, mass_before < params.top_p)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row of `probs` [..., V] -> [...] (long)."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> torch.Tensor:
    """Plain decoding's choice from logits [..., V]: argmax when greedy, else a draw from logits_to_probs."""
    if params.greedy:
        return logits.float().argmax(-1)
    return sample(logits_to_probs(logits, params), generator)


def residual(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution a rejection samples from: norm(max(0, p - q)) over the last dimension.

    A rejection means p(x) < q(x), so max(0, p - q) has mass P(reject) > 0; only float32 rounding of rows
    that each sum to 1 could leave it empty, and then p itself is the limit of the residual.
    """
    excess = (p - q).clamp_min(0)
    mass = excess.sum(-1, keepdim=True)
    return torch.where(mass > 0, excess / mass.clamp_min(torch.finfo(p.dtype).tiny), p)


@dataclass(frozen=True)
class VerifyResult:
    """`accepted` of the `drafted` tokens were kept; `tokens` [accepted + 1] are they plus the correction
    (at the first rejection) or the bonus token (when all were accepted)."""

    accepted: int
    drafted: int
    tokens: torch.Tensor

    @property
    def all_accepted(self) -> bool:
        return self.accepted == self.drafted


def verify(
    target_logits: torch.Tensor,
    draft_tokens: torch.Tensor,
    draft_probs: torch.Tensor | None,
    params: SamplingParams,
    generator: torch.Generator | None = None,
) -> VerifyResult:
    """Verify k drafted tokens against target logits [k+1, V] (row i follows draft_tokens[:i]).

    `draft_probs` [k, V] is q (processed with the same `params`), or None for a deterministic drafter
    (one-hot q). See the module docstring for the rules and why the output follows the target exactly.
    """
    k = len(draft_tokens)
    if target_logits.shape[0] != k + 1:
        raise ValueError(f"need k+1 = {k + 1} rows of target logits, got {target_logits.shape[0]}")
    if draft_probs is not None and draft_probs.shape != (k, target_logits.shape[-1]):
        expected = (k, target_logits.shape[-1])
        raise ValueError(f"draft_probs must be [k, V] = {list(expected)}, got {list(draft_probs.shape)}")
    drafted = draft_tokens.tolist()
    if params.greedy:
        choice = target_logits.float().argmax(-1)  # [k+1]
        accepted = 0
        while accepted < k and drafted[accepted] == int(choice[accepted]):
            accepted += 1
        return VerifyResult(accepted, k, torch.cat([draft_tokens[:accepted], choice[accepted : accepted + 1]]))
    p = logits_to_probs(target_logits, params)  # [k+1, V]
    one_hot = torch.nn.functional.one_hot(draft_tokens, p.shape[-1]).float()  # a deterministic drafter's q = e_x
    q = one_hot if draft_probs is None else draft_probs.float()
    for i, x in enumerate(drafted):
        # Accept x with probability min(1, p(x)/q(x)): u < p(x)/q(x) with u ~ U[0, 1).
        u = torch.rand((), generator=generator)
        if u * q[i, x] < p[i, x]:
            continue
        correction = sample(residual(p[i], q[i]), generator)
        return VerifyResult(i, k, torch.cat([draft_tokens[:i], correction.reshape(1)]))
    bonus = sample(p[k], generator)
    return VerifyResult(k, k, torch.cat([draft_tokens, bonus.reshape(1)]))
