"""Speculative decoding on the bundled model on CPU: acceptance, mean accepted length and tokens/s vs plain.

    python bench/speculative_cpu.py [--max-new-tokens 64] [--repeats 3]

Greedy decoding (output identical to plain decoding, which the run checks), three prompt kinds. Each figure
is the median over repeats after one warm-up. Writes bench/results/speculative_cpu.json and .md.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import environment, write_results

from accel.plugins import get_registry
from accel.runtime.loaders import load_model
from accel.schema import SpeculativeConfig
from accel.speculative.decode import plain_generate, speculative_generate
from accel.speculative.verifier import SamplingParams
from accel.tools.speculative import build_drafter, chat_input_ids

PROMPTS = {
    "chat": "What are three good habits for staying healthy? Answer briefly.",
    "summarise": (
        "Repeat the following sentence exactly, then summarise it in one line: The quick brown fox jumps over "
        "the lazy dog while the farmer watches from the old wooden fence near the river."
    ),
    "code": "Write a Python function that returns the n-th Fibonacci number, with a docstring.",
}
STRATEGIES: dict[str, SpeculativeConfig] = {
    "ngram": SpeculativeConfig(strategy="ngram"),
    "layer_skip": SpeculativeConfig(strategy="layer_skip"),
    "self_quant w8a16": SpeculativeConfig(strategy="self_quant", draft_quantization="w8a16"),
    "self_quant w4a16-rtn": SpeculativeConfig(strategy="self_quant", draft_quantization="w4a16-rtn"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    registry = get_registry()
    model, tokenizer = load_model()
    params = SamplingParams()
    rows = []
    for kind, prompt in PROMPTS.items():
        ids = chat_input_ids(tokenizer, prompt)
        plain_generate(model, ids, 8, params)  # warm-up
        plain_runs = [plain_generate(model, ids, args.max_new_tokens, params, tokenizer.eos_token_id)
                      for _ in range(args.repeats)]
        reference = plain_runs[0][0]
        plain_tps = statistics.median(m.tokens_per_second for _, m in plain_runs)
        rows.append({"prompt": kind, "strategy": "plain", "tokens_per_s": plain_tps, "speedup": 1.0})
        for name, config in STRATEGIES.items():
            drafter = build_drafter(registry, config, model, tokenizer)
            runs = []
            for _ in range(args.repeats + 1):
                tokens, metrics = speculative_generate(model, ids, drafter, args.max_new_tokens, params, config,
                                                       tokenizer.eos_token_id)
                if not torch.equal(tokens, reference):
                    raise SystemExit(f"{name} on {kind}: output differs from plain greedy decoding")
                runs.append(metrics)
            runs = runs[1:]  # the first run warms the drafter up
            tps = statistics.median(m.tokens_per_second for m in runs)
            rows.append({
                "prompt": kind, "strategy": name, "acceptance_rate": runs[0].acceptance_rate,
                "mean_accepted_length": runs[0].mean_accepted_length, "tokens_per_s": tps,
                "speedup": tps / plain_tps, "identical_to_plain": True,
            })
    meta = {**environment(), "model": "SmolLM2-135M-Instruct (bundled, FP32)", "max_new_tokens": args.max_new_tokens,
            "repeats": args.repeats, "decoding": "greedy"}
    columns = ["prompt", "strategy", "acceptance_rate", "mean_accepted_length", "tokens_per_s", "speedup",
               "identical_to_plain"]
    write_results("speculative_cpu", "Speculative decoding on CPU (bundled model)", columns, rows, meta,
                  "Quantized drafts dequantize their weights on every forward on CPU, so they cost about as much "
                  "as the target here; GPU numbers need the CUDA runtime.")


if __name__ == "__main__":
    main()
