"""Speculative decoding on the runtime at batch 1: tokens/s against plain decoding, acceptance, mean accepted length.

    python bench/speculative_gpu.py [--device cuda] [--max-new-tokens 256] [--repeats 3] [--random] [--out DIR]

The bundled model as a runtime DecoderModel (bf16 on CUDA, float32 on CPU) behind one Generator that captures the
T = 1 decode step and the verification widths k + 1 as CUDA graphs. Plain decoding is that Generator's captured
decode (Generator.generate) over exactly the tokens the request produces; speculative decoding is
accel.speculative.runtime_decode. Both are timed on the wall clock from prompt to the last token on the host,
prefill included. Greedy, prompts of three kinds (bench/speculative_cpu.py's), and every output is compared with
plain greedy's (identical_to_plain; first_diff is the first differing position otherwise). Strategies: n-gram
prompt lookup (k = 4, 8); the target's self-quantized W4A16 copy (w4a16-rtn, the runtime's W4A16 kernels) as
draft model; layer skip (the target without draft.default_skip_layers) as draft model. Each figure is the median
over --repeats after one warm-up run. Writes bench/results/speculative_gpu.json and .md for a CUDA run of the
bundled model, else only with --out. --random: random weights at SmolLM2-135M's shapes and byte-level token ids,
no model files (a smoke test of the path).
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
from accel.speculative.draft import DraftStrategy, NGramDraft, default_skip_layers
from accel.speculative.runtime_decode import (
    RuntimeModelDraft,
    layer_subset,
    self_quant_draft_model,
    speculative_generate_runtime,
)
from accel.tools.speculative import chat_input_ids

STRATEGIES = [  # (name, drafter, k)
    ("ngram", "ngram", 4),
    ("ngram", "ngram", 8),
    ("self_quant w4a16", "w4a16", 4),
    ("layer_skip", "layer_skip", 4),
]
# The CPU benchmark's chat and code prompts; the repeat-heavy kind here is a copy task the bundled model carries out
# word for word (67 tokens; the CPU prompt's "repeat then summarise" gets 17 tokens on the GPU, mostly prefill).
PROMPTS = {
    "chat": CPU_PROMPTS["chat"],
    "repeat": (
        "Repeat the following paragraph exactly, word for word:\n\nThe river rises in the northern hills and runs "
        "south for two hundred miles. Along its banks stand old mills, stone bridges and small farms, and in spring "
        "the water carries snow from the mountains down to the sea. Fishermen wait at dawn for the tide, and "
        "children play on the wide sandy shore until the sun goes down."
    ),
    "code": CPU_PROMPTS["code"],
}
TARGETS = {"repeat": 1.6, "chat": 1.3}  # best strategy's speed-up over plain decoding, issue 5
SMOLLM2_135M = LlamaConfig(  # the bundled model's shapes, for --random
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
    num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0, max_position_embeddings=8192,
    tie_word_embeddings=True,
)


def load(random: bool) -> tuple[PreTrainedModel, dict[str, list[int]], int | None, str]:
    """The HF model (float32, CPU), the prompts' token ids, the eos id and the model's name."""
    if random:
        torch.manual_seed(0)
        hf = LlamaForCausalLM(SMOLLM2_135M).eval()
        return hf, {kind: list(text.encode()) for kind, text in PROMPTS.items()}, None, "random (SmolLM2-135M shapes)"
    hf, tokenizer = load_model()
    prompts = {kind: chat_input_ids(tokenizer, text)[0].tolist() for kind, text in PROMPTS.items()}
    return hf, prompts, tokenizer.eos_token_id, "SmolLM2-135M-Instruct (bundled)"


def drafter(kind: str, hf: PreTrainedModel, target: DecoderModel, max_seq: int, dtype: torch.dtype) -> DraftStrategy:
    if kind == "ngram":
        return NGramDraft()
    if kind == "w4a16":
        model = self_quant_draft_model(hf, "w4a16-rtn", dtype=dtype, device=target.device)
    else:
        skipped = set(default_skip_layers(target.args.num_layers))
        model = layer_subset(target, [i for i in range(target.args.num_layers) if i not in skipped])
    return RuntimeModelDraft(model, max_seq=max_seq)


def timed_plain(generator: Generator, prompt: list[int], n: int) -> float:
    """Tokens/s of the captured plain decode producing exactly n tokens (no eos checks: no host syncs)."""
    start = time.perf_counter()
    generator.generate([prompt], n)  # its .tolist() of the tokens waits for the device
    return n / (time.perf_counter() - start)


def run_prompt(
    kind: str, prompt: list[int], generator: Generator, drafts: dict[str, DraftStrategy], args: argparse.Namespace,
    eos: int | None,
) -> list[dict[str, Any]]:
    reference = generator.generate([prompt], args.max_new_tokens, eos=eos).tokens[0]  # also warms the graphs up
    n = len(reference)
    plain_tps = statistics.median(timed_plain(generator, prompt, n) for _ in range(args.repeats))
    rows: list[dict[str, Any]] = [
        {"prompt": kind, "strategy": "plain", "tokens": n, "tokens_per_s": plain_tps, "speedup": 1.0}
    ]
    for name, kind_of_draft, k in STRATEGIES:
        runs = []
        for _ in range(args.repeats + 1):
            tokens, metrics = speculative_generate_runtime(
                generator, prompt, args.max_new_tokens, drafts[kind_of_draft], k=k, eos_token_id=eos
            )
            runs.append((tokens[0].tolist(), metrics))
        tokens, first = runs[1]
        runs = runs[1:]  # the first run warmed the drafter up
        tps = statistics.median(m.tokens_per_second for _, m in runs)
        diff = next((i for i, (a, b) in enumerate(zip(tokens, reference, strict=False)) if a != b), None)
        if diff is None and len(tokens) != n:
            diff = min(len(tokens), n)
        rows.append({
            "prompt": kind, "strategy": name, "k": k, "tokens": len(tokens),
            "acceptance_rate": first.acceptance_rate, "mean_accepted_length": first.mean_accepted_length,
            "tokens_per_s": tps, "speedup": tps / plain_tps,
            "draft_ms": 1e3 * statistics.median(m.draft_seconds for _, m in runs),
            "verify_ms": 1e3 * statistics.median(m.verify_seconds for _, m in runs),
            "identical_to_plain": diff is None, "first_diff": diff,
            "per_position_acceptance": [round(p, 3) for p in first.per_position_acceptance],
        })
        print(f"{kind:10s} {name:18s} k={k} {tps:8.1f} tok/s x{tps / plain_tps:.2f} "
              f"accept {first.acceptance_rate:.2f} len {first.mean_accepted_length:.2f} same {diff is None}",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--random", action="store_true", help="random weights, no model files (smoke test)")
    parser.add_argument("--out", type=Path, help="write the results here instead of bench/results")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    hf, prompts, eos, model_name = load(args.random)
    max_seq = max(len(p) for p in prompts.values()) + args.max_new_tokens + max(k for *_, k in STRATEGIES)
    target = from_hf(hf, dtype=dtype, device=device)
    widths = sorted({k + 1 for *_, k in STRATEGIES})
    generator = Generator(target, max_seq=max_seq, step_widths=widths)
    drafts = {kind: drafter(kind, hf, target, max_seq, dtype) for _, kind, _ in STRATEGIES}
    rows = []
    for kind, prompt in prompts.items():
        rows += run_prompt(kind, prompt, generator, drafts, args, eos)
        if args.out is not None:  # what has run so far survives a time limit
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "partial.json").write_text(json.dumps(rows, indent=1, default=str))
    best = {kind: max(r["speedup"] for r in rows if r["prompt"] == kind and r["strategy"] != "plain")
            for kind in prompts}
    meta = {
        **environment(), "model": model_name, "dtype": str(dtype).removeprefix("torch."), "batch": 1,
        "max_new_tokens": args.max_new_tokens, "repeats": args.repeats, "decoding": "greedy",
        "cuda_graphs": generator.cuda_graphs, "verify_widths": widths,
        "target_kernels": target.kernel_meta(),
        "w4a16_draft_kernels": drafts["w4a16"].model.kernel_meta(),  # type: ignore[attr-defined]
        "best_speedup": best,
        "targets_met": {kind: best[kind] >= goal for kind, goal in TARGETS.items()},
    }
    columns = ["prompt", "strategy", "k", "tokens", "acceptance_rate", "mean_accepted_length", "tokens_per_s",
               "speedup", "draft_ms", "verify_ms", "identical_to_plain"]
    notes = (
        "tokens/s: wall clock from prompt to the last token on the host, prefill included, median over repeats; "
        "plain = the same Generator's CUDA-graph T=1 decode over the same number of tokens. mean_accepted_length "
        "counts the correction/bonus token (vLLM). Speed-up ~ mean_accepted_length x (plain step time / round "
        "time); a round is one verify step of width k+1 (about one decode step on a GPU for a model this small) "
        "plus the draft's k steps for model drafts, whose steps cost about as much as the target's here."
    )
    if args.out is not None or (device.type == "cuda" and not args.random):
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            common.RESULTS = args.out
        write_results("speculative_gpu", "Speculative decoding on the runtime, batch 1", columns, rows, meta, notes)
    else:
        print(common.markdown_table(columns, rows))
        print(meta)


if __name__ == "__main__":
    main()
