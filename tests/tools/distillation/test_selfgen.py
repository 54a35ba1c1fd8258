"""Self-generated distillation text: the prompt set's splits, the stream being the target's own greedy replies
(checked against transformers' generate), its cache, and the distill job trained on it."""

import pytest
import torch

from accel.errors import CorpusError
from accel.runtime.loaders import load_model
from accel.tools.distillation import DistillationConfig, distill_loaded
from accel.tools.distillation.selfgen import generated_stream, instruction_prompts, prompt_pool, prompt_split
from accel.tools.speculative import chat_input_ids


def test_prompts_are_deterministic_disjoint_and_exclude_the_benchmarks():
    train = instruction_prompts(200, "calibration", seed=3)
    assert train == instruction_prompts(200, "calibration", seed=3)
    assert train != instruction_prompts(200, "calibration", seed=4)
    assert len(set(train)) == 200 and all(prompt_split(p) == "calibration" for p in train)
    held = instruction_prompts(50, "evaluation")
    assert not set(held) & set(train) and all(prompt_split(p) == "evaluation" for p in held)
    every = set(prompt_pool("calibration")) | set(prompt_pool("evaluation"))
    assert set(instruction_prompts(len(prompt_pool("evaluation")), "evaluation")) == set(prompt_pool("evaluation"))
    assert "What are three good habits for staying healthy? Answer briefly." not in every
    assert "Write a Python function that returns the n-th Fibonacci number, with a docstring." not in every
    assert any(p.startswith("Write a Python function") for p in every) and len(every) > 1500
    with pytest.raises(CorpusError, match="pick 1.."):
        instruction_prompts(len(prompt_pool("evaluation")) + 1, "evaluation")


@pytest.mark.slow
def test_stream_is_the_targets_greedy_replies_and_is_cached(tmp_path):
    target, tokenizer = load_model()
    prompts = instruction_prompts(3, "evaluation", seed=1)
    cache = tmp_path / "gen.safetensors"
    stream = generated_stream(target, tokenizer, split="evaluation", num_prompts=3, max_new_tokens=12,
                              temperature=0.0, batch_size=2, seed=1, cache=cache)
    expected = []
    for prompt in prompts:
        ids = chat_input_ids(tokenizer, prompt)
        out = target.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.eos_token_id)
        expected += out[0].tolist()
    assert stream.tolist() == expected
    assert cache.is_file()
    # A cached stream is read back as it is (a resumed run trains on the same text), whatever the model.
    again = generated_stream(None, tokenizer, split="evaluation", num_prompts=3, max_new_tokens=12,  # type: ignore[arg-type]
                             temperature=0.0, batch_size=2, seed=1, cache=cache)
    assert torch.equal(again, stream)


@pytest.mark.slow
def test_distill_on_generated_text_measures_on_held_out_replies(tmp_path):
    target, tokenizer = load_model()
    config = DistillationConfig(num_layers=1, steps=2, seq_len=16, batch_size=1, eval_tokens=32,
                                text_source="generated", generate_prompts=8, generate_tokens=8)
    report = distill_loaded(target, tokenizer, config, source="bundled", out=tmp_path / "draft", progress=False)
    assert report.before.num_tokens == report.after.num_tokens == 32
    cached = sorted(p.name for p in (tmp_path / "draft.checkpoints").glob("generated-*.safetensors"))
    assert [name.split("-")[1] for name in cached] == ["calibration", "evaluation"]


def test_too_few_held_out_tokens_is_an_error(tmp_path):
    from accel.tools.distillation.pipeline import training_text

    target, tokenizer = load_model()
    config = DistillationConfig(num_layers=1, steps=1, seq_len=512, eval_tokens=512, text_source="generated",
                                generate_prompts=8, generate_tokens=1)
    with pytest.raises(CorpusError, match="raise generate_prompts or generate_tokens"):
        training_text(target, tokenizer, config, tmp_path)
