"""Self-generated training text: the target's own replies to instruction prompts (self-distillation).

A draft is accepted where it predicts what the target writes, so the best text to distill on is the target's
own output on the kind of requests it serves (Medusa-2 and EAGLE train on regenerated replies for the same
reason). The bundled corpus is Python reference prose; a chat model's replies look nothing like it. This
module builds instruction prompts from templates x subjects (deterministic, no download), has the target
answer them on the accel runtime (batched, static KV cache, CUDA graphs on a GPU) and returns the
conversations (chat template + reply) as one token stream for TokenWindows.

Prompts are split like the corpus, by a hash of the text: one in five goes to the held-out set on which the
before/after agreement is measured, and the benchmark's prompts (bench/speculative_*.py) are never generated.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from pathlib import Path

import safetensors.torch
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.data.corpus import Split
from accel.errors import CorpusError

__all__ = ["GENERATED_SOURCE", "generated_stream", "instruction_prompts", "prompt_pool", "prompt_split"]

GENERATED_SOURCE = "generated"
EVALUATION_MODULUS = 5

_TEMPLATES = (
    "Explain {s} in simple terms.",
    "What is {s}? Answer in a few sentences.",
    "Give me three facts about {s}.",
    "Why is {s} important?",
    "Write a short paragraph about {s}.",
    "What are the pros and cons of {s}?",
    "How would you describe {s} to a child?",
    "List a few practical tips about {s}.",
    "Write a short poem about {s}.",
    "Tell me a short story that involves {s}.",
    "Summarise what you know about {s} in two sentences.",
    "What is a common misconception about {s}?",
    "How has {s} changed over time?",
    "Write a haiku about {s}.",
    "What questions should a beginner ask about {s}?",
    "Give a one-sentence definition of {s}.",
    "What would happen if there were no {s}?",
    "Write a friendly email to a colleague about {s}.",
    "What are the main parts of {s}?",
    "Describe {s} in three bullet points.",
    "Can you recommend a way to learn about {s}?",
    "What is the history of {s}, briefly?",
    "Write a tweet about {s}.",
    "What are two interesting questions about {s}, with answers?",
)
_SUBJECTS = (
    "sleep", "the water cycle", "photosynthesis", "saving money", "learning a new language", "time management",
    "the moon", "volcanoes", "recycling", "regular exercise", "coffee", "the internet", "electric cars",
    "gardening", "public speaking", "friendship", "the ocean", "rainbows", "honey bees", "computers", "music",
    "reading books", "cooking pasta", "climate change", "the solar system", "dinosaurs", "vaccines", "teamwork",
    "writing an essay", "job interviews", "meditation", "a balanced diet", "the human heart", "earthquakes",
    "bicycles", "chess", "the Roman Empire", "democracy", "solar power", "migrating birds", "mountains",
    "deserts", "trees", "smartphones", "budgeting", "stress", "travelling abroad", "museums", "public libraries",
    "robots", "artificial intelligence", "the weather", "snow", "coral reefs", "bread baking", "green tea",
    "football", "running a marathon", "volunteering", "the printing press", "electricity", "magnets", "clouds",
    "the immune system", "online privacy", "remote work", "board games", "pets", "cats", "dogs", "rivers",
    "forests", "city parks", "trains", "airplanes", "bridges", "the periodic table", "gravity", "light",
    "sound", "plastic pollution", "fresh water", "kindness", "curiosity", "habits", "goal setting", "maps",
)
_CODE_TASKS = (
    "reverses a string", "checks whether a number is prime", "returns the sum of a list of numbers",
    "counts the vowels in a string", "computes the factorial of n", "finds the largest number in a list",
    "sorts a list of words by length", "merges two dictionaries", "counts the lines in a text file",
    "converts Celsius to Fahrenheit", "checks whether a string is a palindrome", "removes duplicates from a list",
    "returns the average of a list", "finds the greatest common divisor of two numbers",
    "flattens a nested list", "counts how often each word appears in a sentence", "capitalises every word",
    "returns the even numbers of a list", "computes the area of a circle", "checks whether a year is a leap year",
)
_CODE_TEMPLATES = (
    "Write a Python function that {t}.",
    "Write a Python function that {t}, with a docstring.",
    "Show me how to write a function in Python that {t}.",
    "Write a short Python program that {t}, and explain it.",
)


def _excluded() -> frozenset[str]:
    """The benchmarks' prompts: never trained on."""
    return frozenset({
        "What are three good habits for staying healthy? Answer briefly.",
        "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
    })


def prompt_split(prompt: str) -> Split:
    """evaluation when sha256(prompt) % 5 == 0, else calibration (disjoint and deterministic)."""
    digest = int(hashlib.sha256(prompt.encode("utf-8")).hexdigest(), 16)
    return "evaluation" if digest % EVALUATION_MODULUS == 0 else "calibration"


def prompt_pool(split: Split) -> list[str]:
    """Every instruction prompt of `split` (templates x subjects and code tasks, the benchmarks' excluded), sorted."""
    everything = [t.format(s=s) for t, s in itertools.product(_TEMPLATES, _SUBJECTS)]
    everything += [t.format(t=task) for t, task in itertools.product(_CODE_TEMPLATES, _CODE_TASKS)]
    return sorted(p for p in set(everything) - _excluded() if prompt_split(p) == split)


def instruction_prompts(count: int, split: Split, seed: int = 0) -> list[str]:
    """`count` distinct instruction prompts of `split`, a seeded sample of its pool."""
    pool = prompt_pool(split)
    if not 1 <= count <= len(pool):
        raise CorpusError(f"asked for {count} generated prompts of the {split} split; it has {len(pool)}: "
                          f"pick 1..{len(pool)}")
    return random.Random(seed).sample(pool, count)


@torch.no_grad()
def _answer(
    target: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], max_new_tokens: int,
    temperature: float, batch_size: int, seed: int,
) -> torch.Tensor:
    """Chat-template each prompt, let the target reply on the runtime, and concatenate prompt + reply ids."""
    from accel.runtime.generate import Generator  # the runtime loads only when generated text is asked for
    from accel.runtime.model import from_hf
    from accel.tools.speculative import chat_input_ids

    device = next(target.parameters()).device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = from_hf(target, dtype=dtype, device=device)
    ids = [chat_input_ids(tokenizer, prompt)[0].tolist() for prompt in prompts]
    generator = Generator(model, max_batch=min(batch_size, len(ids)),
                          max_seq=max(len(i) for i in ids) + max_new_tokens)
    pieces: list[int] = []
    for first in range(0, len(ids), batch_size):
        batch = ids[first : first + batch_size]
        result = generator.generate(batch, max_new_tokens, temperature=temperature, seed=seed + first,
                                    eos=tokenizer.eos_token_id)
        for prompt, reply in zip(batch, result.tokens, strict=True):
            pieces += prompt + reply
    return torch.tensor(pieces, dtype=torch.long)


def generated_stream(
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    split: Split,
    num_prompts: int,
    max_new_tokens: int,
    temperature: float,
    batch_size: int,
    seed: int,
    cache: Path | None = None,
) -> torch.Tensor:
    """The token stream [N] of the target's replies to `num_prompts` prompts of `split`. With `cache` (a file),
    the stream is read from it when present and written to it otherwise, so a resumed run trains on exactly the
    text the interrupted one did."""
    if cache is not None and cache.is_file():
        return safetensors.torch.load_file(cache)["tokens"]
    prompts = instruction_prompts(num_prompts, split, seed)
    stream = _answer(target, tokenizer, prompts, max_new_tokens, temperature, batch_size, seed)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(cache.name + ".partial")
        safetensors.torch.save_file({"tokens": stream}, partial)
        partial.replace(cache)
    return stream
