"""Generation on the runtime: greedy equals transformers' generate token for token, ragged batches equal each
prompt alone, a multi-token step equals single steps, sampling is seeded, bad input is named; on a GPU the
CUDA-graph decode equals eager, and a captured prefill equals the eager prefill of the same padded batch."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from transformers import LlamaConfig

from accel.runtime.generate import ARGMAX_CHUNK, Generator, generate, logits_to_probs, sample, vocab_argmax
from accel.runtime.loaders import load_model
from accel.runtime.model import DecoderModel, from_hf, random_model

PROMPTS = [
    "The capital of France is a city that",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
]


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundled():
    return load_model(dtype=torch.float32)


@pytest.fixture(scope="module")
def runtime(bundled) -> DecoderModel:
    return from_hf(bundled[0])


@pytest.fixture(scope="module")
def prompts(bundled) -> list[list[int]]:
    return [bundled[1](text).input_ids for text in PROMPTS]


@pytest.fixture(scope="module")
def generator(runtime) -> Generator:
    return Generator(runtime, max_batch=4, max_seq=64)


# ------------------------------------------------------------------------------------- bundled model


@pytest.mark.slow
def test_greedy_equals_transformers_generate(bundled, generator: Generator, prompts) -> None:
    hf, _ = bundled
    eos = hf.generation_config.eos_token_id
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        expected = hf.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False, pad_token_id=eos
        )[0, ids.shape[1] :].tolist()
    result = generator.generate([prompts[0]], 24, eos=eos)
    assert result.tokens == [expected]
    assert result.ttft_s > 0 and len(result.decode_times_s) == len(expected) - 1
    assert generator.lengths == [len(prompts[0]) + len(expected) - 1]


@pytest.mark.slow
def test_ragged_batch_equals_each_prompt_alone(generator: Generator, prompts) -> None:
    batched = generator.generate(prompts, 8)
    alone = [generator.generate([prompt], 8).tokens[0] for prompt in prompts]
    assert batched.tokens == alone
    assert batched.prompt_lengths == [len(prompt) for prompt in prompts]


@pytest.mark.slow
def test_multi_token_step_equals_single_steps(generator: Generator, prompts) -> None:
    draft = [553, 719, 253, 37257]
    generator.prefill([prompts[0], prompts[1]])
    single = torch.cat([generator.step(torch.tensor([[tok], [tok]])) for tok in draft], dim=1)  # [2, 4, vocab]
    generator.prefill([prompts[0], prompts[1]])
    multi = generator.step(torch.tensor([draft, draft]))
    torch.testing.assert_close(multi, single, rtol=1e-4, atol=1e-4)
    # Rewinding drops the last two tokens: stepping them again gives the same logits.
    generator.rewind([length - 2 for length in generator.lengths])
    torch.testing.assert_close(
        generator.step(torch.tensor([draft[2:], draft[2:]])), single[:, 2:], rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
def test_sampling_is_seeded_and_cold_sampling_is_greedy(generator: Generator, prompts) -> None:
    batch = prompts[:2]
    first = generator.generate(batch, 6, temperature=0.8, top_k=50, top_p=0.95, seed=7)
    again = generator.generate(batch, 6, temperature=0.8, top_k=50, top_p=0.95, seed=7)
    assert first.tokens == again.tokens
    greedy = generator.generate(batch, 6)
    assert generator.generate(batch, 6, temperature=1e-6, seed=1).tokens == greedy.tokens
    assert generator.generate(batch, 6, temperature=1.0, top_k=1, seed=2).tokens == greedy.tokens


@pytest.mark.slow
def test_bad_input_names_the_field(generator: Generator, prompts) -> None:
    with pytest.raises(ValueError, match=r"prompts\[1\] has 60 tokens.*max_seq 64"):
        generator.generate([prompts[0], [1] * 60], 8)
    with pytest.raises(ValueError, match="batch of 5 prompts exceeds max_batch 4"):
        generator.generate([prompts[0]] * 5, 2)
    with pytest.raises(ValueError, match=r"prompts\[0\] is empty"):
        generator.generate([[]], 2)
    with pytest.raises(ValueError, match=r"token id 49152, outside the vocabulary"):
        generator.generate([[1, 49152]], 2)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1"):
        generator.generate([prompts[0]], 0)
    with pytest.raises(ValueError, match="kv_format must be one of"):
        Generator(generator.model, kv_format="int2")
    with pytest.raises(ValueError, match="prefill_graphs needs CUDA graphs"):
        Generator(generator.model, max_seq=64, prefill_graphs=(32,))
    generator.prefill([prompts[0]])
    with pytest.raises(ValueError, match="past max_seq 64"):
        generator.step(torch.ones(1, 64 - len(prompts[0]) + 1, dtype=torch.long))


def test_generate_function_sizes_its_own_cache() -> None:
    model = random_model(
        LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        ),
        dtype=torch.float32,
    )
    result = generate(model, [[1, 2, 3], [4]], 5, kv_format="int8")
    assert [len(row) for row in result.tokens] == [5, 5]
    stopped = generate(model, [[1, 2, 3]], 5, eos=result.tokens[0][1])
    assert stopped.tokens[0] == result.tokens[0][:2]


# ------------------------------------------------------------------------------------- sampling


def _argmax_case(vocab: int, device: str) -> None:
    gen = torch.Generator().manual_seed(vocab)
    x = torch.randint(-3, 4, (5, 2, vocab), generator=gen).to(device, torch.bfloat16)  # ties: the first index wins
    x[0, 0, 7 * vocab // 8] = 9.0  # a lone maximum in a late chunk
    x[1, 0, :] = -1.0  # all equal: index 0
    x[2, 1, vocab // 2] = float("nan")  # NaN counts as the maximum
    x[3, 1, -1] = float("inf")
    got = vocab_argmax(x)
    assert got.shape == (5, 2) and got.dtype == torch.int64
    assert torch.equal(got, x.argmax(dim=-1))
    assert torch.equal(vocab_argmax(x[0, 0]), x[0, 0].argmax())  # one row, no batch dims


@pytest.mark.parametrize("vocab", [ARGMAX_CHUNK * 6, ARGMAX_CHUNK * 6 + 3, 100])
def test_vocab_argmax_equals_torch_argmax(vocab: int) -> None:
    _argmax_case(vocab, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("vocab", [ARGMAX_CHUNK * 501, ARGMAX_CHUNK * 6 + 3])
def test_vocab_argmax_equals_torch_argmax_on_cuda(vocab: int) -> None:
    _argmax_case(vocab, "cuda")


def test_top_k_and_top_p_keep_the_right_tokens() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.testing.assert_close(logits_to_probs(logits), torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    torch.testing.assert_close(logits_to_probs(logits, top_k=2), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    # top_p 0.8: 0.5 + 0.3 reaches it, so the smallest such set is the first two tokens.
    torch.testing.assert_close(logits_to_probs(logits, top_p=0.8), torch.tensor([[0.625, 0.375, 0.0, 0.0]]))
    torch.testing.assert_close(logits_to_probs(logits, top_p=0.1), torch.tensor([[1.0, 0.0, 0.0, 0.0]]))


def test_sample_draws_by_probability() -> None:
    probs = torch.tensor([0.7, 0.2, 0.1, 0.0])
    logits = torch.log(probs).expand(20000, 4)
    draws = sample(logits, temperature=1.0, generator=torch.Generator().manual_seed(0))
    frequency = torch.bincount(draws, minlength=4) / 20000
    torch.testing.assert_close(frequency, probs, rtol=0, atol=0.015)  # about 5 standard deviations
    assert torch.equal(sample(logits[:3], temperature=0.0), torch.zeros(3, dtype=torch.long))


# ------------------------------------------------------------------------------------- GPU


def _small_gpu_model(quant: str, kv_format: str) -> DecoderModel:
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=512,
        intermediate_size=1536,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    return random_model(config, dtype=torch.bfloat16, device="cuda", quant=quant, kv_format=kv_format)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.float() - expected.float()).abs().max() / expected.float().abs().max())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kv_format", ["none", "int8"])
@pytest.mark.parametrize("quant", ["none", "w4a16"])
def test_cuda_graph_decode_equals_eager(kv_format: str, quant: str) -> None:
    model = _small_gpu_model(quant, kv_format)
    prompts = [[1, 2, 3, 4, 5], [6, 7], [8, 9, 10]]
    eager = Generator(model, max_batch=4, max_seq=64, cuda_graphs=False)
    expected = {batch: eager.generate(prompts[:batch], 16).tokens for batch in (3, 1)}
    graphed = Generator(model, max_batch=4, max_seq=64, cuda_graphs=True)
    for batch in (3, 1, 3):  # a graph per batch size; the third run replays the first graph on reused rows
        assert graphed.generate(prompts[:batch], 16).tokens == expected[batch], batch
    assert sorted(graphed._graphs) == [(1, 1), (3, 1)]  # (batch, step width)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("quant", "kv_format"), [("none", "none"), ("w4a16", "int8"), ("w8a8-fp8", "int8")])
def test_cuda_graph_prefill_equals_eager_prefill_of_the_padded_batch(quant: str, kv_format: str) -> None:
    model = _small_gpu_model(quant, kv_format)
    prompts = [list(range(1, 20)), [7, 8, 9], list(range(100, 124))]
    graphed = Generator(model, max_batch=4, max_seq=96, prefill_graphs=(16, 32))
    with pytest.raises(ValueError, match=r"prefill_graphs are padded prompt widths from 1 to max_seq 96, got \[97\]"):
        Generator(model, max_batch=4, max_seq=96, prefill_graphs=(32, 97))
    reference = model.new_cache(4, 96)
    for batch, width in ((3, 32), (1, 32), (2, 32), (3, 32)):  # (3, 32) again: a replay with other rows' history
        rows = prompts[:batch]
        logits = graphed.prefill(rows)
        padded = torch.tensor([row + [0] * (width - len(row)) for row in rows], device="cuda")
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.int32, device="cuda")
        with torch.no_grad():
            expected = model.prefill(padded, lengths, reference)
        assert torch.equal(logits, expected), (batch, _relative_error(logits, expected))
    assert sorted(graphed._prefills) == [(1, 32), (2, 32), (3, 32)]  # (batch, padded width)
    graphed.prefill([[5] * 10])  # 10 tokens: the 16-wide graph
    assert (1, 16) in graphed._prefills
    graphed.prefill([list(range(1, 41))])  # longer than every captured width: eager, nothing captured
    assert len(graphed._prefills) == 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("quant", "kv_format"), [("none", "none"), ("w4a16", "int8"), ("w8a8-fp8", "int8")])
def test_decode_after_a_padded_graph_prefill_follows_the_eager_one(quant: str, kv_format: str) -> None:
    """The padding's K/V sit in the cache past each row's length: decode must neither read them nor keep them."""
    model = _small_gpu_model(quant, kv_format)
    prompts = [list(range(1, 20)), [7, 8, 9], list(range(100, 124))]
    eager = Generator(model, max_batch=4, max_seq=96, cuda_graphs=False)
    graphed = Generator(model, max_batch=4, max_seq=96, prefill_graphs=(48,))
    follow = torch.tensor([[11, 12, 13, 14, 15, 16]] * len(prompts))  # the same tokens fed to both, one a step

    def logits(generator: Generator) -> torch.Tensor:  # [1 + steps, B, vocab]
        out = [generator.prefill(prompts)]
        out += [generator.step(follow[:, i : i + 1])[:, 0] for i in range(follow.shape[1])]
        return torch.stack(out)

    expected, actual = logits(eager), logits(graphed)
    assert (len(prompts), 48) in graphed._prefills
    # bf16 GEMMs of 48 and 24 rows may sum in other orders; padding K/V read by mistake would be O(1) off.
    assert _relative_error(actual, expected) < 2e-2
