"""Medusa heads: the head math against float64, storage, drafting from the Generator's own step (greedy output
identical to plain greedy, sampling matching plain sampling's distribution), and head training."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig

from accel.errors import ArtifactError
from accel.runtime.generate import Generator
from accel.runtime.loaders import load_model
from accel.runtime.model import from_hf
from accel.speculative.medusa import MedusaDraft, MedusaHeads, load_heads, save_heads
from accel.speculative.runtime_decode import speculative_generate_runtime
from accel.tools.distillation import DistillationConfig
from accel.tools.distillation.data import TokenWindows
from accel.tools.distillation.heads import distill_heads, head_agreement, heads_loss
from accel.tools.distillation.train import train_loop
from accel.tools.speculative import chat_input_ids

from .test_runtime_decode import chi_square, exact_three_token_distribution, tiny_hf

PROMPT = [1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2]


def random_heads(hidden: int, num_heads: int, seed: int = 0, scale: float = 0.5) -> MedusaHeads:
    heads = MedusaHeads(hidden, num_heads)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        heads.weight.copy_(torch.randn(heads.weight.shape, generator=gen) * scale / hidden**0.5)
        heads.bias.copy_(torch.randn(heads.bias.shape, generator=gen) * 0.1)
    return heads.eval()


def test_heads_match_the_definition_in_float64():
    heads = random_heads(16, 3)
    lm_head = torch.nn.Linear(16, 10, bias=False)
    hidden = torch.randn(2, 5, 16)
    got = heads(hidden, lm_head)  # [2, 5, 3, 10]
    for i in range(3):
        w, b = heads.weight[i].double(), heads.bias[i].double()
        h = hidden.double()
        expected = (h + torch.nn.functional.silu(h @ w.T + b)) @ lm_head.weight.double().T
        torch.testing.assert_close(got[..., i, :].double(), expected, rtol=1e-5, atol=1e-5)
    assert torch.equal(heads.draft(hidden, lm_head), got.argmax(-1))


def test_untrained_heads_repeat_the_next_token_guess():
    heads = MedusaHeads(16, 2)
    lm_head = torch.nn.Linear(16, 10, bias=False)
    hidden = torch.randn(7, 16)
    assert torch.equal(heads.draft(hidden, lm_head), lm_head(hidden).argmax(-1)[:, None].expand(7, 2))


def test_save_load_round_trip_and_errors(tmp_path):
    heads = random_heads(16, 3)
    out = save_heads(heads, tmp_path / "heads", {"note": "test"})
    loaded, config = load_heads(out, hidden_size=16)
    assert torch.equal(loaded.weight, heads.weight) and torch.equal(loaded.bias, heads.bias)
    assert config["num_heads"] == 3 and config["report"] == {"note": "test"}
    save_heads(random_heads(16, 2, seed=1), out, {})  # replaces the directory as a whole
    assert load_heads(out)[0].num_heads == 2
    with pytest.raises(ArtifactError, match="the target's are 32; train heads for this target"):
        load_heads(out, hidden_size=32)
    with pytest.raises(ArtifactError, match="not readable Medusa heads"):
        load_heads(tmp_path / "missing")


@pytest.mark.parametrize("k", [1, 3])
def test_greedy_with_medusa_equals_plain_greedy(k):
    hf = tiny_hf(0)
    model = from_hf(hf)
    heads = random_heads(hf.config.hidden_size, 3, seed=2)
    plain = Generator(model, max_seq=96)
    generator = Generator(model, max_seq=96, step_widths=(k + 1,), draft_heads=heads)
    expected = plain.generate([PROMPT], 40).tokens[0]
    tokens, metrics = speculative_generate_runtime(generator, PROMPT, 40, MedusaDraft(generator), k=k)
    assert tokens.tolist() == [expected]
    assert metrics.num_drafts > 0 and metrics.num_generated_tokens == 40


def test_medusa_sampling_matches_plain_sampling():
    """Deterministic drafts (the one-hot rule): the first three sampled tokens follow plain sampling's joint."""
    vocab = 4
    hf = tiny_hf(0, vocab=vocab, hidden=32)
    model = from_hf(hf)
    generator = Generator(model, max_seq=32, step_widths=(3,), draft_heads=random_heads(32, 2, seed=3, scale=2.0))
    from accel.speculative.verifier import SamplingParams

    params = SamplingParams(temperature=1.0, top_p=0.95)
    prompt = [3, 1, 0, 1, 2, 3]
    expected = exact_three_token_distribution(Generator(model, max_seq=32), prompt, params)
    counts = torch.zeros(vocab**3, dtype=torch.float64)
    accepted = drafted = 0
    for seed in range(2000):
        tokens, metrics = speculative_generate_runtime(generator, prompt, 4, MedusaDraft(generator), k=2,
                                                       temperature=1.0, top_p=0.95, seed=seed)
        t1, t2, t3 = tokens[0, :3].tolist()
        counts[(t1 * vocab + t2) * vocab + t3] += 1
        accepted += metrics.num_accepted_tokens
        drafted += metrics.num_drafted_tokens
    statistic, critical = chi_square(counts, expected)
    assert statistic < critical, (statistic, critical)
    assert 0 < accepted < drafted


def test_medusa_draft_needs_heads_and_a_matching_request():
    model = from_hf(tiny_hf(0, hidden=64))
    with pytest.raises(ValueError, match="built with draft_heads"):
        MedusaDraft(Generator(model, max_seq=32))
    generator = Generator(model, max_seq=32, draft_heads=random_heads(64, 2))
    generator.prefill([PROMPT])
    with pytest.raises(ValueError, match="out of step with its Generator"):
        MedusaDraft(generator).propose(torch.tensor([*PROMPT, 1, 2]), 2)


def test_heads_loss_is_the_shifted_kl_and_training_lowers_it(tmp_path):
    hf = tiny_hf(0, hidden=64)
    lm_head = hf.get_output_embeddings()
    heads = random_heads(64, 2, scale=0.1)
    hidden = torch.randn(2, 6, 64)
    logits = torch.randn(2, 6, 64)
    expected = 0.0
    for i in range(2):
        log_q = torch.log_softmax(lm_head(heads.features(hidden[:, : 5 - i])[..., i, :]).double(), -1)
        log_p = torch.log_softmax(logits[:, 1 + i :].double(), -1)
        expected += 0.8**i * float((log_p.exp() * (log_p - log_q)).sum(-1).mean().detach())
    assert float(heads_loss(heads, hidden, logits, lm_head, 1.0)) == pytest.approx(expected, rel=1e-5)

    # A periodic text: the target's distribution two and three tokens ahead is a function of h_t's phase.
    period = torch.tensor([5, 17, 3, 42, 9, 30, 11])
    windows = TokenWindows(period.repeat(400), 16, 4)
    held = torch.stack([period.repeat(4)[i : i + 16] for i in range(4)])
    trained = MedusaHeads(64, 2)
    before = head_agreement(trained, hf, held)
    config = DistillationConfig(steps=100, seq_len=16, batch_size=4, lr=1e-2, warmup_steps=1, eval_tokens=16,
                                checkpoint_every=30)

    def loss_of(batch):
        with torch.no_grad():
            h = hf.get_decoder()(input_ids=batch).last_hidden_state
        return heads_loss(trained, h, lm_head(h), lm_head, 1.0)

    result = train_loop(trained, loss_of, windows, config, tmp_path / "ckpt", progress=False)
    assert result.losses[-1] < result.losses[0]
    after = head_agreement(trained, hf, held)
    assert min(after) > 0.75 and max(before) < 0.1, (before, after)  # early positions lack the phase


@pytest.mark.slow
def test_distill_heads_on_the_bundled_model_drafts_losslessly(tmp_path):
    target, tokenizer = load_model()
    config = DistillationConfig(steps=3, seq_len=32, batch_size=2, eval_tokens=64, text_source="generated",
                                generate_prompts=8, generate_tokens=24)
    report = distill_heads(target, tokenizer, config, 2, source="bundled", out=tmp_path / "heads", progress=False)
    assert report.steps == 3 and len(report.after) == 2
    heads, stored = load_heads(tmp_path / "heads", hidden_size=target.config.hidden_size)
    assert stored["report"]["heldout_top1_agreement_after"] == report.after
    model = from_hf(target)
    prompt = chat_input_ids(tokenizer, "Name three colours of the rainbow.")[0].tolist()
    plain = Generator(model, max_seq=len(prompt) + 32).generate([prompt], 24, eos=tokenizer.eos_token_id)
    generator = Generator(model, max_seq=len(prompt) + 32, step_widths=(3,), draft_heads=heads)
    tokens, _ = speculative_generate_runtime(generator, prompt, 24, MedusaDraft(generator), k=2,
                                             eos_token_id=tokenizer.eos_token_id)
    assert tokens.tolist() == plain.tokens


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_medusa_equals_plain_greedy():
    from accel.runtime.model import random_model

    config = LlamaConfig(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    model = random_model(config, dtype=torch.bfloat16, device="cuda")
    heads = random_heads(256, 3, seed=4).to(device="cuda", dtype=torch.bfloat16)
    expected = Generator(model, max_seq=300).generate([PROMPT], 200).tokens[0]
    for graphs in (False, True):
        # With graphs the prefill is captured too, at the prompt's own width (no padding: the same bits as eager).
        prefill_graphs = (len(PROMPT),) if graphs else ()
        generator = Generator(model, max_seq=300, step_widths=(4,), draft_heads=heads, cuda_graphs=graphs,
                              prefill_graphs=prefill_graphs)
        tokens, metrics = speculative_generate_runtime(generator, PROMPT, 200, MedusaDraft(generator), k=3)
        assert tokens[0].tolist() == expected, graphs
        assert metrics.num_drafts > 0
        if graphs:
            assert sorted(generator._graphs) == [(1, 1), (1, 4)]
            assert sorted(generator._prefills) == [(1, len(PROMPT))]


def test_generator_drafts_are_the_heads_on_the_targets_hidden_states():
    """After prefill and after a width-3 step, the Generator's head tokens are the heads applied to transformers'
    final hidden states at those positions (the rows MedusaDraft picks from)."""
    hf = tiny_hf(0)
    heads = random_heads(hf.config.hidden_size, 3, seed=5)
    sequence = [*PROMPT, 7, 9, 11]
    with torch.no_grad():
        hidden = hf.get_decoder()(input_ids=torch.tensor([sequence])).last_hidden_state[0]
    expected = heads.draft(hidden, hf.get_output_embeddings())  # [L, K]
    generator = Generator(from_hf(hf), max_seq=64, step_widths=(3,), draft_heads=heads)
    generator.prefill([PROMPT])
    start, drafted = generator.last_head_tokens
    assert start == len(PROMPT) - 1 and torch.equal(drafted[0, 0], expected[len(PROMPT) - 1])
    generator.step_buffers(torch.tensor([sequence[len(PROMPT) : len(PROMPT) + 3]]))
    start, drafted = generator.last_head_tokens
    assert start == len(PROMPT) and torch.equal(drafted[0], expected[len(PROMPT) : len(PROMPT) + 3])
