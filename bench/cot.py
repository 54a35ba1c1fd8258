"""Chain-of-thought acceleration on the bundled model on CPU: thinking tokens saved and answer agreement.

    python bench/cot.py [--tasks 20] [--max-new-tokens 40] [--budget 20] [--probe-interval 10]

Generated arithmetic word problems (accel.data.cot_tasks, seed 0), greedy decoding. Every mode is compared
with the unaccelerated baseline (plain decoding, then the same answer rule); step speculation drafts with
the target quantized to W8 (self_quant w8a16). Writes bench/results/cot.json and .md; the JSON also holds
every task's answers, thinking tokens and step scores.
"""

from __future__ import annotations

import argparse

from common import environment, write_results

from accel.data.cot_tasks import arithmetic_tasks
from accel.plugins import get_registry
from accel.runtime.loaders import load_model
from accel.schema import CoTConfig, SpeculativeConfig
from accel.speculative.cot_controller import CoTAccelController
from accel.tools.speculative import build_drafter

MODES = ["lossless", "step_speculation", "early_exit", "budget"]
COLUMNS = ["mode", "lossy", "answer_agreement", "accuracy", "mean_thinking_tokens", "thinking_tokens_saved_pct",
           "mean_target_forward_passes", "target_forward_passes_saved_pct", "draft_steps_accepted",
           "draft_steps_rejected", "seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    parser.add_argument("--budget", type=int, default=20, help="thinking_budget of the budget mode")
    parser.add_argument("--probe-interval", type=int, default=10)
    parser.add_argument("--agreement", type=int, default=2, help="probes that must agree for early exit")
    parser.add_argument("--threshold", type=float, default=0.5, help="step_accept_threshold")
    parser.add_argument("--answer-tokens", type=int, default=8)
    parser.add_argument("--modes", nargs="+", default=MODES)
    args = parser.parse_args()
    registry = get_registry()
    model, tokenizer = load_model()
    speculative = SpeculativeConfig(strategy="self_quant", draft_quantization="w8a16")
    draft = build_drafter(registry, speculative, model, tokenizer).model
    config = CoTConfig(
        max_new_tokens=args.max_new_tokens, thinking_budget=args.budget, mode="budget", step_delimiter="\n",
        step_accept_threshold=args.threshold, probe_interval=args.probe_interval,
        early_exit_agreement=args.agreement, answer_tokens=args.answer_tokens,
    )
    controller = CoTAccelController(model, tokenizer, draft, config)
    tasks = arithmetic_tasks(args.tasks, args.seed)
    summaries = controller.evaluate(tasks, args.modes, progress=lambda line: print(line, flush=True))
    rows = [summary.row() for summary in summaries.values()]
    per_task = [
        {"question": task.question, "expected": task.answer, **{
            label: {"answer": s.results[i].answer, "thinking_tokens": s.results[i].thinking_tokens,
                    "stop_reason": s.results[i].stop_reason, "step_scores": s.results[i].step_scores,
                    "probe_answers": s.results[i].probe_answers}
            for label, s in summaries.items()}}
        for i, task in enumerate(tasks)
    ]
    meta = {**environment(), "model": "SmolLM2-135M-Instruct (bundled, FP32)", "tasks": args.tasks,
            "seed": args.seed, "decoding": "greedy", "step_draft": "self_quant w8a16", **config.to_dict(),
            "per_task": per_task}
    meta.update(mode=args.modes, step_delimiter=repr(config.step_delimiter), answer_prompt=repr(config.answer_prompt))
    write_results("cot", "Chain-of-thought acceleration on CPU (bundled model, arithmetic word problems)", COLUMNS,
                  rows, meta,
                  "Agreement is with the baseline's answers, accuracy with the known answers. Saved percentages "
                  "are of the baseline's totals. Target forwards include early exit's probes and the forced "
                  "answers. lossless is token-level prompt lookup, identical to the baseline; the other modes "
                  "are lossy. On CPU the W8 draft costs about as much as the target per forward, so step "
                  "speculation saves target forwards, not wall time.")


if __name__ == "__main__":
    main()
