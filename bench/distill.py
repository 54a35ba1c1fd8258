"""Draft distillation on CPU (bundled model): held-out KL and top-1 agreement of the layer-truncated student
before and after distillation, and greedy speculative decoding with each as the draft.

    python bench/distill.py [--layers 6] [--steps 200] [--seq-len 128] [--batch 4] [--out DIR] [--reuse]

Trains with `distill_loaded` (the job behind `sage infer distill`) into --out, or with --reuse measures the
artifact already there. The distilled draft is loaded the way users load it, through the draft_model
strategy; the undistilled draft is `make_student` on the same layers. Every speculative output is checked
against plain greedy decoding. Writes bench/results/distill.json and .md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import environment, write_results
from speculative_cpu import PROMPTS

from accel.plugins import get_registry
from accel.runtime.artifact import verify_artifact
from accel.runtime.loaders import load_model
from accel.schema import SpeculativeConfig
from accel.speculative.decode import plain_generate, speculative_generate
from accel.speculative.draft import DraftStrategy, ModelDraft
from accel.speculative.metrics import AggregateMetrics
from accel.speculative.verifier import SamplingParams
from accel.tools.distillation import DistillationConfig, distill_loaded, make_student
from accel.tools.speculative import build_drafter, chat_input_ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--layer-selection", default="first", choices=["first", "strided"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--eval-tokens", type=int, default=4096)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("accel-out/bench-distill-draft"))
    parser.add_argument("--reuse", action="store_true", help="measure the artifact in --out instead of training")
    args = parser.parse_args()
    target, tokenizer = load_model()
    if args.reuse:
        report = verify_artifact(args.out)["distillation"]
    else:
        config = DistillationConfig(num_layers=args.layers, layer_selection=args.layer_selection, steps=args.steps,
                                    seq_len=args.seq_len, batch_size=args.batch, lr=args.lr,
                                    eval_tokens=args.eval_tokens)
        report = distill_loaded(target, tokenizer, config, source="bundled", out=args.out).to_dict()
    spec_config = SpeculativeConfig(strategy="draft_model", draft_model=str(args.out))
    drafters: dict[str, tuple[DraftStrategy, dict]] = {
        "undistilled": (ModelDraft(make_student(target, report["layers"])), report["heldout_before"]),
        "distilled": (build_drafter(get_registry(), spec_config, target, tokenizer), report["heldout_after"]),
    }
    params = SamplingParams()
    totals = {name: AggregateMetrics() for name in drafters}
    rows = []
    for kind, prompt in PROMPTS.items():
        ids = chat_input_ids(tokenizer, prompt)
        reference, plain = plain_generate(target, ids, args.max_new_tokens, params, tokenizer.eos_token_id)
        rows.append({"prompt": kind, "draft": "plain", "tokens_per_s": plain.tokens_per_second})
        for name, (drafter, _) in drafters.items():
            tokens, metrics = speculative_generate(target, ids, drafter, args.max_new_tokens, params, spec_config,
                                                   tokenizer.eos_token_id)
            if not torch.equal(tokens, reference):
                raise SystemExit(f"{name} draft on {kind}: output differs from plain greedy decoding")
            totals[name].add(metrics)
            rows.append({"prompt": kind, "draft": name, "acceptance_rate": metrics.acceptance_rate,
                         "mean_accepted_length": metrics.mean_accepted_length,
                         "tokens_per_s": metrics.tokens_per_second, "identical_to_plain": True})
    for name, (_, heldout) in drafters.items():
        rows.append({"prompt": "all", "draft": name, "heldout_kl": heldout["kl"],
                     "heldout_top1_agreement": heldout["top1_agreement"],
                     "heldout_expected_acceptance": heldout["expected_acceptance"],
                     "acceptance_rate": totals[name].acceptance_rate,
                     "mean_accepted_length": totals[name].mean_accepted_length,
                     "tokens_per_s": totals[name].tokens_per_second, "identical_to_plain": True})
    cfg = report["config"]
    meta = {**environment(), "model": "SmolLM2-135M-Instruct (bundled, FP32)",
            "draft_layers": f"{cfg['layer_selection']} {len(report['layers'])} of {report['target_layers']}: "
                            f"{report['layers']}",
            "steps": report["steps"], "seq_len": cfg["seq_len"], "batch_size": cfg["batch_size"], "lr": cfg["lr"],
            "temperature": cfg["temperature"], "final_loss": report["final_loss"],
            "train_seconds": report["train_seconds"], "heldout_tokens": report["heldout_after"]["num_tokens"],
            "max_new_tokens": args.max_new_tokens, "decoding": "greedy", "corpus_sha256": report["corpus_sha256"],
            "distillation": report}
    columns = ["prompt", "draft", "heldout_kl", "heldout_top1_agreement", "heldout_expected_acceptance",
               "acceptance_rate", "mean_accepted_length", "tokens_per_s", "identical_to_plain"]
    write_results("distill", "Draft distillation on CPU (bundled model)", columns, rows, meta,
                  "heldout_*: evaluation split of the bundled corpus, student vs target at temperature 1 "
                  "(KL in nats; top-1 agreement is the greedy acceptance proxy). Speculative rows: greedy, "
                  "draft_model strategy defaults (k=4, dynamic 1..8); tokens/s is one run on shared CPU cores.")


if __name__ == "__main__":
    main()
