"""The verifier keeps the target's distribution: greedy by hand, the sampling rule exactly (float64) and
empirically (chi-square), and the chi-square test catches a broken rule."""

import math

import pytest
import torch

from accel.speculative import verifier
from accel.speculative.verifier import SamplingParams, logits_to_probs, verify

SAMPLING = SamplingParams(temperature=1.0)


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic over the cells with expected mass, and its critical value at alpha = 1e-4
    (Wilson-Hilferty: chi2_crit(df) ~ df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3, z = 3.719)."""
    expected = expected_probs.double() * counts.sum()
    cells = expected > 0
    assert counts[~cells].sum() == 0, "a token with zero probability was emitted"
    statistic = float(((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum())
    df = int(cells.sum()) - 1
    return statistic, df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3


def test_greedy_accepts_the_argmax_prefix_then_corrects():
    logits = torch.full((4, 6), -1.0)
    for row, best in enumerate([2, 5, 1, 4]):
        logits[row, best] = 3.0
    greedy = SamplingParams()
    result = verify(logits, torch.tensor([2, 5, 0]), None, greedy)
    assert (result.accepted, result.drafted, result.tokens.tolist()) == (2, 3, [2, 5, 1])
    result = verify(logits, torch.tensor([2, 5, 1]), None, greedy)
    assert result.all_accepted and result.tokens.tolist() == [2, 5, 1, 4]  # bonus argmax of the last row
    assert verify(logits[:1], torch.tensor([], dtype=torch.long), None, greedy).tokens.tolist() == [2]


def test_logits_to_probs_applies_temperature_then_top_k_then_top_p():
    logits = torch.log(torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1]))
    torch.testing.assert_close(logits_to_probs(logits, SAMPLING), torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1]))
    top_k = logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=3))
    torch.testing.assert_close(top_k, torch.tensor([0.0, 0.4, 0.3, 0.15, 0.0]) / 0.85)
    # After top-3 the masses are .47, .35, .18: top_p 0.8 keeps the first two (0.47 < 0.8 <= 0.82).
    both = logits_to_probs(logits, SamplingParams(temperature=1.0, top_k=3, top_p=0.8))
    torch.testing.assert_close(both, torch.tensor([0.0, 0.4, 0.3, 0.0, 0.0]) / 0.7)
    hot = logits_to_probs(logits, SamplingParams(temperature=0.5))
    torch.testing.assert_close(hot, torch.softmax(logits * 2, -1))
    assert logits_to_probs(logits, SamplingParams()).tolist() == [0.0, 1.0, 0.0, 0.0, 0.0]
    assert logits_to_probs(logits, SAMPLING).dtype == torch.float32


@pytest.mark.parametrize("seed", range(5))
def test_the_emitted_token_follows_p_exactly(seed):
    """P(emit y) = q(y) min(1, p(y)/q(y)) + P(reject) r(y) = p(y), with the module's residual r, in float64."""
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 2, -1)
    p[3] = 0.0  # a token the target never emits (top-k/top-p zeroes)
    p /= p.sum()
    drafts = {"model": torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * 2, -1),
              "one-hot": torch.nn.functional.one_hot(torch.tensor(5), 12).double()}
    for q in drafts.values():
        accept = torch.where(q > 0, torch.minimum(torch.ones_like(p), p / q), torch.zeros_like(p))
        reject = 1 - (q * accept).sum()
        emitted = q * accept + reject * verifier.residual(p, q)
        torch.testing.assert_close(emitted, p, rtol=0, atol=1e-9)


def emitted_counts(p_logits: torch.Tensor, q: torch.Tensor | None, draws: int, seed: int) -> torch.Tensor:
    """Run one-position verification `draws` times (draft x ~ q, or the fixed token 0 for one-hot) and count
    the first emitted token."""
    g = torch.Generator().manual_seed(seed)
    vocab = p_logits.shape[-1]
    logits = torch.stack([p_logits, torch.zeros(vocab)])  # row 1 (the bonus) is never the first token
    draft_tokens = torch.multinomial(q, draws, replacement=True, generator=g) if q is not None else torch.zeros(
        draws, dtype=torch.long)
    counts = torch.zeros(vocab, dtype=torch.float64)
    for x in draft_tokens:
        counts[int(verify(logits, x.reshape(1), None if q is None else q[None], SAMPLING, g).tokens[0])] += 1
    return counts


P_LOGITS = torch.log(torch.tensor([0.30, 0.05, 0.20, 0.10, 0.15, 0.02, 0.08, 0.10]))
Q = torch.tensor([0.05, 0.30, 0.10, 0.20, 0.05, 0.15, 0.05, 0.10])


@pytest.mark.parametrize("q", [Q, None], ids=["draft-probs", "one-hot"])
def test_sampled_tokens_match_p_and_a_broken_rule_is_caught(q, monkeypatch):
    p = logits_to_probs(P_LOGITS, SAMPLING)
    statistic, critical = chi_square(emitted_counts(P_LOGITS, q, 4000, seed=1), p)
    assert statistic < critical
    # Resampling from p instead of the residual emits min(p, q) + P(reject) p, which is not p.
    monkeypatch.setattr(verifier, "residual", lambda p_row, q_row: p_row)
    statistic, critical = chi_square(emitted_counts(P_LOGITS, q, 4000, seed=1), p)
    assert statistic > critical


def test_verify_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="k\\+1"):
        verify(torch.zeros(2, 4), torch.tensor([1, 2]), None, SAMPLING)
    with pytest.raises(ValueError, match="draft_probs"):
        verify(torch.zeros(3, 4), torch.tensor([1, 2]), torch.full((2, 5), 0.2), SAMPLING)


def test_sampling_params_validate():
    with pytest.raises(ValueError):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError):
        SamplingParams(top_p=0)
    a, b = SamplingParams(seed=3).make_generator(), SamplingParams(seed=3).make_generator()
    assert torch.equal(torch.rand(4, generator=a), torch.rand(4, generator=b))
