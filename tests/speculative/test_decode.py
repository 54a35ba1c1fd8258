"""The draft-verify loop: speculative sampling matches plain sampling on tiny random models; on the bundled
model greedy speculative decoding equals plain greedy token for token for every strategy; fallbacks."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.plugins import load_registry
from accel.runtime.loaders import load_model
from accel.schema import SpeculativeConfig
from accel.speculative.decode import plain_generate, speculative_generate
from accel.speculative.draft import ModelDraft, NGramDraft
from accel.speculative.metrics import AggregateMetrics, RequestMetrics
from accel.speculative.verifier import SamplingParams, logits_to_probs

VOCAB = 8


def tiny_llama(seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic over the cells with expected mass, and its critical value at alpha = 1e-4
    (Wilson-Hilferty: chi2_crit(df) ~ df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3, z = 3.719)."""
    expected = expected_probs.double() * counts.sum()
    cells = expected > 0
    assert counts[~cells].sum() == 0, "a token with zero probability was emitted"
    statistic = float(((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum())
    df = int(cells.sum()) - 1
    return statistic, df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3


@torch.no_grad()
def first_two_tokens_distribution(model: LlamaForCausalLM, prompt: torch.Tensor, params: SamplingParams):
    """Plain sampling's exact joint P(t1, t2) [V, V] = p(t1 | prompt) p(t2 | prompt, t1)."""
    first = logits_to_probs(model(prompt).logits[0, -1], params)
    follow = torch.cat([prompt.expand(VOCAB, -1), torch.arange(VOCAB)[:, None]], dim=1)
    second = logits_to_probs(model(follow).logits[:, -1], params)  # [V, V]
    return first[:, None] * second


@pytest.mark.parametrize("drafter_kind", ["draft_model", "ngram"])
def test_speculative_sampling_matches_plain_sampling(drafter_kind):
    target, draft = tiny_llama(0), tiny_llama(1)
    params = SamplingParams(temperature=1.0, top_k=6, top_p=0.9)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 7, 2, 6, 3, 1]])
    expected = first_two_tokens_distribution(target, prompt, params).reshape(-1)
    config = SpeculativeConfig(num_speculative_tokens=2, dynamic_draft_length=False)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(VOCAB * VOCAB, dtype=torch.float64)
    drafted = accepted = 0
    for _ in range(1500):
        drafter = ModelDraft(draft) if drafter_kind == "draft_model" else NGramDraft(1, 2)
        tokens, metrics = speculative_generate(target, prompt, drafter, 3, params, config, generator=generator)
        counts[int(tokens[0, 0]) * VOCAB + int(tokens[0, 1])] += 1
        drafted, accepted = drafted + metrics.num_drafted_tokens, accepted + metrics.num_accepted_tokens
    statistic, critical = chi_square(counts, expected)
    assert statistic < critical
    assert 0 < accepted < drafted  # both the acceptance and the rejection path ran


def test_plain_sampling_matches_the_exact_distribution():
    target = tiny_llama(0)
    params = SamplingParams(temperature=1.0, top_k=6, top_p=0.9)
    prompt = torch.tensor([[3, 1, 4, 1, 5, 7, 2, 6, 3, 1]])
    expected = first_two_tokens_distribution(target, prompt, params).reshape(-1)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(VOCAB * VOCAB, dtype=torch.float64)
    tokens, _ = plain_generate(target, prompt.expand(1500, -1), 2, params, generator=generator)
    counts.index_add_(0, tokens[:, 0] * VOCAB + tokens[:, 1], torch.ones(len(tokens), dtype=torch.float64))
    statistic, critical = chi_square(counts, expected)
    assert statistic < critical


def test_metrics_follow_the_vllm_definitions():
    metrics = RequestMetrics()
    metrics.record_step(3, 3)
    metrics.record_step(4, 1)
    metrics.record_step(0, 0)
    assert (metrics.num_drafts, metrics.num_drafted_tokens, metrics.num_accepted_tokens) == (2, 7, 4)
    assert metrics.acceptance_rate == 4 / 7 and metrics.mean_accepted_length == 1 + 4 / 2
    assert metrics.per_position_acceptance == [1.0, 0.5, 0.5, 0.0] and metrics.steps == 3
    total = AggregateMetrics()
    total.add(metrics)
    total.add(metrics)
    assert total.num_requests == 2 and total.num_drafted_tokens == 14 and total.drafted_at == [4, 4, 4, 2]
    assert total.to_dict()["acceptance_rate"] == metrics.acceptance_rate


def test_eos_stops_and_a_batch_without_a_fallback_is_refused():
    target = tiny_llama(0)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    plain, _ = plain_generate(target, prompt, 8, SamplingParams())
    eos = int(plain[0, 2])
    tokens, _ = speculative_generate(target, prompt, NGramDraft(), 8, SamplingParams(), SpeculativeConfig(),
                                     eos_token_id=eos)
    assert tokens[0].tolist() == plain[0, : plain[0].tolist().index(eos) + 1].tolist()
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(target, prompt.expand(2, -1), NGramDraft(), 4, SamplingParams(), SpeculativeConfig())


# The bundled model.
PROMPTS = [
    [{"role": "user", "content": "Write a short poem about the sea."}],
    [{"role": "user", "content": "Repeat this list twice: apples, pears, plums, cherries, figs."}],
]


@pytest.fixture(scope="module")
def bundled():
    model, tokenizer = load_model()
    registry = load_registry()
    prompts = [tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt",
                                             return_dict=True)["input_ids"] for chat in PROMPTS]
    plain = [plain_generate(model, prompt, 32, SamplingParams())[0] for prompt in prompts]
    return model, tokenizer, registry, prompts, plain


def build(name: str, bundled, **fields):
    model, tokenizer, registry, _, _ = bundled
    config = SpeculativeConfig(strategy=name, draft_model="bundled" if name == "draft_model" else None, **fields)
    drafter = registry.draft_strategy(name).factory(config, target=model, tokenizer=tokenizer, registry=registry,
                                                    draft_model=model)
    return drafter, config


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ngram", "layer_skip", "self_quant", "draft_model"])
def test_greedy_speculative_equals_plain_greedy(name, bundled):
    model, _, _, prompts, plains = bundled
    drafter, config = build(name, bundled)
    for prompt, plain in zip(prompts, plains, strict=True):
        tokens, metrics = speculative_generate(model, prompt, drafter, 32, SamplingParams(), config)
        assert tokens.tolist() == plain.tolist()
        assert metrics.num_generated_tokens == 32 and metrics.num_fallbacks == 0
        assert 0 <= metrics.num_accepted_tokens <= metrics.num_drafted_tokens
        assert 0.0 <= metrics.acceptance_rate <= 1.0 and metrics.mean_accepted_length >= 1.0
        assert all(0.0 <= rate <= 1.0 for rate in metrics.per_position_acceptance)
        assert metrics.draft_seconds > 0 and metrics.verify_seconds > 0
        if name == "draft_model":  # the target drafting for itself is always right
            assert metrics.acceptance_rate == 1.0


@pytest.mark.slow
def test_kill_switch_and_batch_fallback(bundled):
    model, _, _, prompts, plains = bundled
    drafter, config = build("layer_skip", bundled, min_acceptance_rate=1.0, acceptance_window=2)
    plain = plains[0][:, :24]
    tokens, metrics = speculative_generate(model, prompts[0], drafter, 24, SamplingParams(), config)
    assert tokens.tolist() == plain.tolist()
    assert metrics.num_fallbacks == 1 and metrics.num_drafts == 2  # off after the first full window
    assert metrics.steps > metrics.num_drafts
    config = SpeculativeConfig(disable_by_batch_size=1)
    batch = prompts[0].expand(2, -1)
    tokens, metrics = speculative_generate(model, batch, drafter, 8, SamplingParams(), config)
    assert tokens.tolist() == [plain[0, :8].tolist()] * 2
    assert metrics.num_fallbacks == 1 and metrics.num_drafts == 0
