"""Draft-and-verify on the runtime: greedy output equals the same Generator's plain greedy decoding token for token
(tiny models and the bundled model; n-gram, self-quantized, layer-subset and separate draft models); sampled
output follows the target's distribution; eos, dynamic k and the kill switch; on a GPU the CUDA-graph loop
equals the eager one."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.runtime.generate import Generator
from accel.runtime.loaders import load_model
from accel.runtime.model import DecoderModel, from_hf, random_model
from accel.schema import SpeculativeConfig
from accel.speculative.draft import NGramDraft, default_skip_layers
from accel.speculative.runtime_decode import (
    RuntimeModelDraft,
    greedy_verify,
    layer_subset,
    self_quant_draft_model,
    speculative_generate_runtime,
)
from accel.speculative.verifier import SamplingParams, logits_to_probs, verify
from accel.tools.speculative import chat_input_ids

PROMPT = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]
MAX_SEQ = 96


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: threads only add contention on a shared machine
    yield
    torch.set_num_threads(threads)


def tiny_hf(seed: int, vocab: int = 64, hidden: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3,
                         max_position_embeddings=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def hf_target() -> LlamaForCausalLM:
    return tiny_hf(0)


@pytest.fixture(scope="module")
def target(hf_target) -> DecoderModel:
    return from_hf(hf_target)


@pytest.fixture(scope="module")
def generator(target) -> Generator:
    return Generator(target, max_seq=MAX_SEQ, step_widths=(5,))


def test_greedy_verify_is_the_verifiers_greedy_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        k = int(torch.randint(1, 6, (), generator=gen))
        logits = torch.randn(k + 1, 16, generator=gen)
        choice = logits.argmax(-1)
        drafts = torch.where(torch.rand(k, generator=gen) < 0.7, choice[:k], torch.randint(0, 16, (k,), generator=gen))
        expected = verify(logits, drafts, None, SamplingParams())
        result = greedy_verify(choice.tolist(), drafts.tolist())
        assert (result.accepted, result.drafted) == (expected.accepted, expected.drafted)
        assert torch.equal(result.tokens, expected.tokens)


@pytest.mark.parametrize("drafter", ["ngram", "self_quant_w8a16", "layer_subset", "separate_model"])
def test_greedy_equals_plain_greedy(drafter, generator, hf_target, target) -> None:
    strategy = {
        "ngram": lambda: NGramDraft(1, 3),
        "self_quant_w8a16": lambda: RuntimeModelDraft(self_quant_draft_model(hf_target, "w8a16", dtype=torch.float32),
                                                      max_seq=MAX_SEQ),
        "layer_subset": lambda: RuntimeModelDraft(layer_subset(target, [0, 2]), max_seq=MAX_SEQ),
        "separate_model": lambda: RuntimeModelDraft(from_hf(tiny_hf(1)), max_seq=MAX_SEQ),
    }[drafter]()
    expected = generator.generate([PROMPT], 40).tokens[0]
    tokens, metrics = speculative_generate_runtime(generator, PROMPT, 40, strategy, k=4)
    assert tokens.tolist() == [expected]
    assert metrics.num_generated_tokens == 40 and metrics.num_drafts > 0
    assert 1.0 <= metrics.mean_accepted_length <= 5.0
    # The same drafter object serves a second request with the same result (its cache state is per request).
    again, _ = speculative_generate_runtime(generator, PROMPT, 40, strategy, k=4)
    assert torch.equal(again, tokens)


def test_self_quant_draft_accepts_most_tokens(hf_target, generator) -> None:
    """A W8 copy of the target agrees with it on almost every greedy token."""
    draft = RuntimeModelDraft(self_quant_draft_model(hf_target, "w8a16", dtype=torch.float32), max_seq=MAX_SEQ)
    _, metrics = speculative_generate_runtime(generator, PROMPT, 40, draft, k=4)
    assert metrics.acceptance_rate > 0.5
    assert metrics.mean_accepted_length > 2


def test_dynamic_k_eos_and_kill_switch(generator, target) -> None:
    expected = generator.generate([PROMPT], 40).tokens[0]
    eos = expected[20]
    stop = expected.index(eos) + 1
    dynamic = SpeculativeConfig(num_speculative_tokens=2, min_speculative_tokens=1, max_speculative_tokens=8)
    tokens, metrics = speculative_generate_runtime(generator, PROMPT, 40, NGramDraft(1, 3), k=4,
                                                   eos_token_id=eos, config=dynamic)
    assert tokens.tolist() == [expected[:stop]]
    assert max(len(metrics.drafted_at), 1) <= 4  # k caps the dynamic draft length
    kill = SpeculativeConfig(num_speculative_tokens=4, dynamic_draft_length=False, min_acceptance_rate=1.0,
                             acceptance_window=2)
    draft = RuntimeModelDraft(layer_subset(target, [0]), max_seq=MAX_SEQ)
    tokens, metrics = speculative_generate_runtime(generator, PROMPT, 40, draft, k=4, config=kill)
    assert tokens.tolist() == [expected]
    assert metrics.num_fallbacks == 1 and metrics.num_drafts == 2


def test_bad_arguments_name_the_field(generator) -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        speculative_generate_runtime(generator, PROMPT, 4, NGramDraft(), k=0)
    with pytest.raises(ValueError, match="max_seq 96 is below"):
        speculative_generate_runtime(generator, PROMPT, MAX_SEQ, NGramDraft(), k=4)
    with pytest.raises(ValueError, match="prompt_ids is empty"):
        speculative_generate_runtime(generator, [], 4, NGramDraft(), k=4)
    with pytest.raises(ValueError, match="layer indices in 0..2"):
        layer_subset(generator.model, [0, 3])


# ------------------------------------------------------------------------------------- sampling


def chi_square(counts: torch.Tensor, expected_probs: torch.Tensor) -> tuple[float, float]:
    """Pearson's statistic over the cells with expected mass, and its critical value at alpha = 1e-4
    (Wilson-Hilferty: chi2_crit(df) ~ df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3, z = 3.719)."""
    expected = expected_probs.double() * counts.sum()
    cells = expected > 0
    assert counts[~cells].sum() == 0, "a token with zero probability was emitted"
    statistic = float(((counts[cells] - expected[cells]) ** 2 / expected[cells]).sum())
    df = int(cells.sum()) - 1
    return statistic, df * (1 - 2 / (9 * df) + 3.719 * math.sqrt(2 / (9 * df))) ** 3


def exact_three_token_distribution(generator: Generator, prompt: list[int], params: SamplingParams) -> torch.Tensor:
    """Plain sampling's P(t1, t2, t3) [V^3] = p(t1) p(t2 | t1) p(t3 | t1, t2), from prefills of every prefix."""
    vocab = generator.model.args.vocab_size

    def probs(prefix: list[int]) -> torch.Tensor:
        return logits_to_probs(generator.prefill([prefix])[0], params)

    joint = torch.zeros(vocab, vocab, vocab)
    first = probs(prompt)
    for t1 in range(vocab):
        second = probs([*prompt, t1])
        for t2 in range(vocab):
            joint[t1, t2] = first[t1] * second[t2] * probs([*prompt, t1, t2])
    return joint.reshape(-1)


def test_speculative_sampling_matches_plain_sampling() -> None:
    """Tokens 2 and 3 come from one round that drafts two tokens, so the accept / residual / bonus rules of the
    verifier all shape the joint distribution this checks."""
    vocab = 4
    target = Generator(from_hf(tiny_hf(0, vocab=vocab, hidden=32)), max_seq=32, step_widths=(3,))
    draft = RuntimeModelDraft(from_hf(tiny_hf(1, vocab=vocab, hidden=32)), max_seq=32)
    params = SamplingParams(temperature=1.0, top_p=0.95)
    prompt = [3, 1, 0, 1, 2, 3]
    expected = exact_three_token_distribution(target, prompt, params)
    counts = torch.zeros(vocab**3, dtype=torch.float64)
    drafted = accepted = 0
    for seed in range(2000):
        tokens, metrics = speculative_generate_runtime(target, prompt, 4, draft, k=2, temperature=1.0, top_p=0.95,
                                                       seed=seed)
        t1, t2, t3 = tokens[0, :3].tolist()
        counts[(t1 * vocab + t2) * vocab + t3] += 1
        drafted += metrics.num_drafted_tokens
        accepted += metrics.num_accepted_tokens
    statistic, critical = chi_square(counts, expected)
    assert statistic < critical, (statistic, critical)
    assert 0 < accepted < drafted  # both acceptance and rejection happened


# ------------------------------------------------------------------------------------- bundled model


@pytest.mark.slow
def test_bundled_greedy_equals_plain_greedy() -> None:
    hf, tokenizer = load_model(dtype=torch.float32)
    model = from_hf(hf)
    text = ("Repeat the following sentence exactly, then summarise it in one line: The quick brown fox jumps over "
            "the lazy dog while the farmer watches from the old wooden fence near the river.")
    prompt = chat_input_ids(tokenizer, text)[0].tolist()
    steps = 24
    generator = Generator(model, max_seq=len(prompt) + steps + 4, step_widths=(5,))
    expected = generator.generate([prompt], steps, eos=tokenizer.eos_token_id).tokens[0]
    kept = [i for i in range(model.args.num_layers) if i not in default_skip_layers(model.args.num_layers)]
    for strategy in (NGramDraft(), RuntimeModelDraft(layer_subset(model, kept), max_seq=len(prompt) + steps + 4)):
        tokens, metrics = speculative_generate_runtime(generator, prompt, steps, strategy, k=4,
                                                       eos_token_id=tokenizer.eos_token_id)
        assert tokens.tolist() == [expected], type(strategy).__name__
        assert metrics.num_accepted_tokens > 0, type(strategy).__name__


# ------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_loop_equals_eager_loop() -> None:
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)
    model = random_model(config, dtype=torch.bfloat16, device="cuda")
    draft_model = layer_subset(model, [0, 1, 2])
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    results = []
    for graphs in (False, True):
        target = Generator(model, max_seq=128, cuda_graphs=graphs, step_widths=(5,))
        draft = RuntimeModelDraft(draft_model, max_seq=128, cuda_graphs=graphs)
        results.append([speculative_generate_runtime(target, prompt, 48, strategy, k=4)[0].tolist()
                        for strategy in (NGramDraft(), draft)])
        if graphs:
            assert sorted(target._graphs) == [(1, 1), (1, 5)]
            assert sorted(draft.generator._graphs) == [(1, 1), (1, 2)]
    assert results[0] == results[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("k", [3, 5])
def test_cuda_separate_draft_model_keeps_greedy_identical(k) -> None:
    """A separate, shallower draft model (as `sage infer distill` makes) on its own captured Generator: the
    output is plain greedy's, token for token."""
    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=6,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    model = random_model(config, dtype=torch.bfloat16, device="cuda")
    draft_config = LlamaConfig(**{**config.to_dict(), "num_hidden_layers": 2})
    draft_model = random_model(draft_config, dtype=torch.bfloat16, device="cuda", seed=1)
    prompt = [5, 6, 7, 8, 5, 6, 7, 8, 5, 6]
    target = Generator(model, max_seq=300, step_widths=(k + 1,))
    expected = target.generate([prompt], 200).tokens[0]
    draft = RuntimeModelDraft(draft_model, max_seq=300)
    for _ in range(2):
        tokens, metrics = speculative_generate_runtime(target, prompt, 200, draft, k=k)
        assert tokens[0].tolist() == expected
        assert metrics.num_drafts > 0
