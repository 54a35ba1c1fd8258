"""Speculative decoding on the runtime at batch 1: tokens/s against plain decoding, acceptance, mean accepted length.

    python bench/speculative_gpu.py [--device cuda] [--max-new-tokens 256] [--repeats 3] [--random]
        [--medusa HEADS_DIR] [--draft-model DRAFT_DIR ...] [--only-distilled] [--out DIR]

The bundled model as a runtime DecoderModel (bf16 on CUDA, float32 on CPU) behind one Generator that captures the
T = 1 decode step and the verification widths k + 1 as CUDA graphs. Plain decoding is that Generator's captured
decode (Generator.generate) over exactly the tokens the request produces; speculative decoding is
accel.speculative.runtime_decode. Both are timed on the wall clock from prompt to the last token on the host,
prefill included. Greedy, prompts of three kinds (six chat, one repeat-heavy, two code), every output compared with
plain greedy's (identical_to_plain; per-prompt first_diff in the JSON). Strategies: n-gram prompt lookup (k = 4,
8); the target's self-quantized W4A16 copy (w4a16-rtn) and layer skip (the target without
draft.default_skip_layers) as draft models; an oracle that drafts the reference's own tokens (k = 3: the ceiling,
and a check of the width-(k+1) step's rounding against the T=1 step's); with --medusa, the target's Medusa heads
(`sage infer distill --medusa-heads K`: drafting inside the verify step, k = 2..K); with --draft-model, distilled
layer-truncated drafts (`sage infer distill`, k = 3, 5). meta.step_ms holds each step's cost, host included. Each
figure is the median over --repeats after one warm-up run. Writes bench/results/speculative_gpu.json and .md for a
CUDA run of the bundled model, else only with --out. --random: random weights at SmolLM2-135M's shapes and
byte-level token ids, no model files (a smoke test of the path).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import common
import torch
from common import environment, write_results
from speculative_cpu import PROMPTS as CPU_PROMPTS
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel

from accel.runtime.generate import Generator
from accel.runtime.loaders import load_model
from accel.runtime.model import DecoderModel, from_hf
from accel.speculative.draft import Draft, DraftStrategy, NGramDraft, default_skip_layers
from accel.speculative.medusa import MedusaDraft, load_heads
from accel.speculative.metrics import AggregateMetrics
from accel.speculative.runtime_decode import (
    RuntimeModelDraft,
    layer_subset,
    self_quant_draft_model,
    speculative_generate_runtime,
)
from accel.tools.distillation.selfgen import prompt_pool
from accel.tools.speculative import chat_input_ids

STRATEGIES = [  # (name, drafter, k)
    ("ngram", "ngram", 4),
    ("ngram", "ngram", 8),
    ("self_quant w4a16", "w4a16", 4),
    ("layer_skip", "layer_skip", 4),
]
DISTILLED_KS = (3, 5)  # k for each --draft-model
MEDUSA_KS = (2, 3, 4)  # k for --medusa (at most its number of heads)
ORACLE_K = 3  # the oracle drafts the reference's own next tokens: the ceiling at this k, and a numerics check
# Prompts of three kinds. chat: the CPU benchmark's chat prompt and five more everyday requests; repeat: a copy
# task the bundled model carries out word for word (the CPU prompt's "repeat then summarise" gets 17 tokens on
# the GPU, mostly prefill); code: the CPU benchmark's and one more. None is among the prompts a draft is
# distilled on (accel.tools.distillation.selfgen; checked at start).
PROMPTS = {
    "chat": [
        CPU_PROMPTS["chat"],
        "How do I make a good cup of tea?",
        "What should I pack for a weekend camping trip?",
        "Can you suggest a few ideas for a rainy afternoon at home?",
        "Why is the sky blue? Keep it short.",
        "Write a short thank-you note to a neighbour who watered my plants.",
    ],
    "repeat": [
        "Repeat the following paragraph exactly, word for word:\n\nThe river rises in the northern hills and runs "
        "south for two hundred miles. Along its banks stand old mills, stone bridges and small farms, and in spring "
        "the water carries snow from the mountains down to the sea. Fishermen wait at dawn for the tide, and "
        "children play on the wide sandy shore until the sun goes down."
    ],
    "code": [
        CPU_PROMPTS["code"],
        "Write a Python class for a simple bank account with deposit and withdraw methods.",
    ],
}
TARGETS = {"repeat": 1.6, "chat": 1.3}  # best strategy's speed-up over plain decoding, issue 5
SMOLLM2_135M = LlamaConfig(  # the bundled model's shapes, for --random
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
    tie_word_embeddings=True,
)


def load(random: bool) -> tuple[PreTrainedModel, dict[str, list[list[int]]], int | None, str]:
    """The HF model (float32, CPU), each kind's prompts as token ids, the eos id and the model's name."""
    if random:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(SMOLLM2_135M).eval()
        ids = {kind: [list(text.encode()) for text in texts] for kind, texts in PROMPTS.items()}
        return hf, ids, None, "random (SmolLM2-135M shapes)"
    hf, tokenizer = load_model()
    ids = {kind: [chat_input_ids(tokenizer, text)[0].tolist() for text in texts] for kind, texts in PROMPTS.items()}
    return hf, ids, tokenizer.eos_token_id, "SmolLM2-135M-Instruct (bundled)"


def check_held_out() -> None:
    """No benchmark prompt is among the prompts drafts are distilled on."""
    pool = set(prompt_pool("calibration")) | set(prompt_pool("evaluation"))
    overlap = pool & {text for texts in PROMPTS.values() for text in texts}
    if overlap:
        raise SystemExit(f"benchmark prompts are in the distillation prompts: {sorted(overlap)}")


def drafter(kind: str, hf: PreTrainedModel, target: DecoderModel, max_seq: int, dtype: torch.dtype) -> DraftStrategy:
    if kind == "ngram":
        return NGramDraft()
    if kind == "w4a16":
        model = self_quant_draft_model(hf, "w4a16-rtn", dtype=dtype, device=target.device)
    elif kind == "layer_skip":
        skipped = set(default_skip_layers(target.args.num_layers))
        model = layer_subset(target, [i for i in range(target.args.num_layers) if i not in skipped])
    else:  # a draft model directory (sage infer distill's artifact)
        model = from_hf(load_model(kind)[0], dtype=dtype, device=target.device)
    return RuntimeModelDraft(model, max_seq=max_seq)


class OracleDraft(DraftStrategy):
    """Drafts the plain greedy output's own next tokens (set per prompt): every draft is right, so a rejection
    can only come from the width-(k+1) step's rounding differing from the T=1 step's (a near-tie flipping), and
    the speed-up is the ceiling of any drafter at this k."""

    def __init__(self) -> None:
        self.sequence: list[int] = []

    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        n = len(tokens)
        if self.sequence[:n] != tokens.tolist():
            return Draft(tokens.new_empty(0))  # off the reference (after a flip): nothing to propose
        return Draft(torch.tensor(self.sequence[n : n + k], dtype=torch.long))


def step_ms(generator: Generator, prompt: list[int], width: int, steps: int = 64) -> float:
    """Milliseconds per step of `width` tokens after `prompt`, host included (steps issued back to back, each
    rewound, then one sync): the cost the decode loops pay per step."""
    generator.prefill([prompt])
    tokens = torch.tensor([prompt[-width:]])
    length = len(prompt)
    sync = torch.cuda.synchronize if generator.model.device.type == "cuda" else (lambda: None)
    for _ in range(3):
        generator.step_buffers(tokens)
        generator.rewind([length])
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        generator.step_buffers(tokens)
        generator.rewind([length])
    sync()
    return 1e3 * (time.perf_counter() - start) / steps


def timed_plain(generator: Generator, prompt: list[int], n: int) -> float:
    """Seconds of the captured plain decode producing exactly n tokens (no eos checks: no host syncs)."""
    start = time.perf_counter()
    generator.generate([prompt], n)  # its .tolist() of the tokens waits for the device
    return time.perf_counter() - start


def run_kind(
    kind: str, prompts: list[list[int]], generator: Generator, drafts: dict[str, DraftStrategy],
    strategies: list[tuple[str, str, int]], args: argparse.Namespace, eos: int | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One row per strategy for the prompts of `kind` together (tokens over seconds, both summed over prompts;
    metrics summed as vLLM does), and one row per prompt and strategy."""
    references = [generator.generate([p], args.max_new_tokens, eos=eos).tokens[0] for p in prompts]  # warms up
    plain = [statistics.median(timed_plain(generator, p, len(r)) for _ in range(args.repeats))
             for p, r in zip(prompts, references, strict=True)]
    tokens = sum(len(r) for r in references)
    plain_tps = tokens / sum(plain)
    rows = [{"prompt": kind, "strategy": "plain", "prompts": len(prompts), "tokens": tokens,
             "tokens_per_s": plain_tps, "speedup": 1.0}]
    per_prompt = []
    for name, kind_of_draft, k in strategies:
        total, seconds, identical = AggregateMetrics(), 0.0, 0
        strategy, target = drafts[kind_of_draft]
        for index, (prompt, reference) in enumerate(zip(prompts, references, strict=True)):
            if isinstance(strategy, OracleDraft):
                strategy.sequence = [*prompt, *reference]
            runs = []
            for _ in range(args.repeats + 1):
                out, metrics = speculative_generate_runtime(
                    target, prompt, args.max_new_tokens, strategy, k=k, eos_token_id=eos
                )
                runs.append((out[0].tolist(), metrics))
            out, first = runs[1]
            runs = runs[1:]  # the first run warmed the drafter up
            median = statistics.median(m.seconds for _, m in runs)
            same = out == reference
            identical += same
            seconds += median
            total.add(first)
            first_diff = next((i for i, (a, b) in enumerate(zip(out, reference, strict=False)) if a != b), None)
            per_prompt.append({"prompt": kind, "index": index, "strategy": name, "k": k, "tokens": len(out),
                               "first_diff": first_diff, "speedup": plain[index] / median,
                               "acceptance_rate": first.acceptance_rate,
                               "mean_accepted_length": first.mean_accepted_length, "identical_to_plain": same})
        tps = total.num_generated_tokens / seconds
        rows.append({
            "prompt": kind, "strategy": name, "k": k, "prompts": len(prompts), "tokens": total.num_generated_tokens,
            "acceptance_rate": total.acceptance_rate, "mean_accepted_length": total.mean_accepted_length,
            "tokens_per_s": tps, "speedup": tps / plain_tps,
            "draft_ms": 1e3 * total.draft_seconds, "verify_ms": 1e3 * total.verify_seconds,
            "identical_to_plain": f"{identical}/{len(prompts)}",
            "per_position_acceptance": [round(p, 3) for p in total.per_position_acceptance],
        })
        print(f"{kind:8s} {name:24s} k={k} {tps:8.1f} tok/s x{tps / plain_tps:.2f} accept "
              f"{total.acceptance_rate:.2f} len {total.mean_accepted_length:.2f} same {identical}/{len(prompts)}",
              flush=True)
    return rows, per_prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="random weights, no model files (smoke test)")
    parser.add_argument("--draft-model", action="append", default=[], type=Path,
                        help="a distilled draft (sage infer distill's artifact), drafting with k = 3 and 5; repeatable")
    parser.add_argument("--medusa", type=Path, help="Medusa heads (sage infer distill --medusa-heads), k = 2, 3, 4")
    parser.add_argument("--only-distilled", action="store_true", help="skip the built-in strategies")
    parser.add_argument("--out", type=Path, help="write the results here instead of bench/results")
    args = parser.parse_args()
    check_held_out()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf, prompts, eos, model_name = load(args.random)
    strategies = [] if args.only_distilled else [*STRATEGIES, ("oracle", "oracle", ORACLE_K)]
    heads = None
    if args.medusa is not None:
        heads, _ = load_heads(args.medusa, hidden_size=hf.config.hidden_size)
        strategies += [(f"medusa {heads.num_heads}h", "medusa", k) for k in MEDUSA_KS if k <= heads.num_heads]
    for path in args.draft_model:
        layers = json.loads((path / "config.json").read_text())["num_hidden_layers"]
        strategies += [(f"distilled {layers}L", str(path), k) for k in DISTILLED_KS]
    longest = max(len(p) for texts in prompts.values() for p in texts)
    max_seq = longest + args.max_new_tokens + max(k for *_, k in strategies)
    target = from_hf(hf, dtype=dtype, device=device)
    widths = sorted({k + 1 for *_, k in strategies})
    generator = Generator(target, max_seq=max_seq, step_widths=widths)
    drafts: dict[str, tuple[DraftStrategy, Generator]] = {}
    for _, kind, _ in strategies:
        if kind == "medusa":
            assert heads is not None
            with_heads = Generator(target, max_seq=max_seq, step_widths=widths,
                                   draft_heads=heads.to(device=device, dtype=dtype))
            drafts[kind] = (MedusaDraft(with_heads), with_heads)
        elif kind == "oracle":
            drafts[kind] = (OracleDraft(), generator)
        else:
            drafts[kind] = (drafter(kind, hf, target, max_seq, dtype), generator)
    probe = prompts["chat"][0]
    costs = {"target_T1": step_ms(generator, probe, 1)}
    costs |= {f"target_T{w}": step_ms(generator, probe, w) for w in widths}
    if "medusa" in drafts:
        costs |= {f"target+medusa_T{w}": step_ms(drafts["medusa"][1], probe, w) for w in (1, *widths)}
    for kind, (draft, _) in drafts.items():
        if isinstance(draft, RuntimeModelDraft):
            name = next(n for n, d, _ in strategies if d == kind)
            costs[f"draft {name} T1"] = step_ms(draft.generator, probe, 1)
    print("step ms:", {key: round(value, 3) for key, value in costs.items()}, flush=True)
    rows, per_prompt = [], []
    for kind, texts in prompts.items():
        kind_rows, kind_prompts = run_kind(kind, texts, generator, drafts, strategies, args, eos)
        rows += kind_rows
        per_prompt += kind_prompts
        if args.out is not None:  # what has run so far survives a time limit
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "partial.json").write_text(json.dumps(rows, indent=1, default=str))
    real = [r for r in rows if r["strategy"] not in ("plain", "oracle")]  # the oracle is a ceiling, not a drafter
    best = {kind: max(r["speedup"] for r in real if r["prompt"] == kind) for kind in prompts}
    meta = {
        **environment(), "model": model_name, "dtype": str(dtype).removeprefix("torch."), "batch": 1,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "decoding": "greedy",
        "cuda_graphs": generator.cuda_graphs, "verify_widths": widths, "step_ms": costs,
        "prompts": PROMPTS, "target_kernels": target.kernel_meta(),
        "draft_models": [str(path) for path in args.draft_model],
        "medusa": None if heads is None else str(args.medusa),
        "best_speedup": best,
        "targets_met": {kind: best[kind] >= goal for kind, goal in TARGETS.items()},
        "per_prompt": per_prompt,
    }
    columns = ["prompt", "strategy", "k", "prompts", "tokens", "acceptance_rate", "mean_accepted_length",
               "tokens_per_s", "speedup", "draft_ms", "verify_ms", "identical_to_plain"]
    notes = (
        "One row per prompt kind and strategy, its prompts together: tokens/s = tokens over seconds, both summed "
        "over the kind's prompts (each prompt's seconds the median over repeats, wall clock from prompt to the last "
        "token on the host, prefill included); plain = the same Generator's CUDA-graph T=1 decode over the same "
        "tokens. acceptance and mean_accepted_length (counting the correction/bonus token, as vLLM does) are summed "
        "over the kind's prompts. identical_to_plain: prompts whose output equals plain greedy's. Speed-up ~ "
        "mean_accepted_length x (plain step time / round time); a round is one verify step of width k+1 plus the "
        "draft's k steps for model drafts (meta step_ms: each step's milliseconds, host included)."
    )
    if args.out is not None or (device.type == "cuda" and not args.random):
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            common.RESULTS = args.out
        write_results("speculative_gpu", "Speculative decoding on the runtime, batch 1", columns, rows, meta, notes)
    else:
        print(common.markdown_table(columns, rows))
        print({key: value for key, value in meta.items() if key != "per_prompt"})


if __name__ == "__main__":
    main()
