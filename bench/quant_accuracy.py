"""Accuracy of quantization on the bundled model: perplexity, delta against FP, top-1 agreement with FP.

    python bench/quant_accuracy.py                  # every config, full evaluation split (~25 min on 2 cores)
    python bench/quant_accuracy.py --max-tokens 4096 --configs rtn-w4-sym gptq-w4-sym

Each config runs in its own process (fresh model, clean peak-memory reading). Weight configs are evaluated
with the FP32 model's top-1 predictions as reference. KV cache quantization has its own procedure and
benchmark (bench/kv_quality.py). Writes bench/results/quant_accuracy.json and .md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, write_results

# name -> (preset, overrides on the quantization profile, description)
WEIGHT_CONFIGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "rtn-w4-sym": ("w4a16-rtn", {}, "RTN W4A16 g128 symmetric"),
    "gptq-w4-sym": ("w4a16", {}, "GPTQ W4A16 g128 symmetric"),
    "rtn-w4-asym": ("w4a16-rtn", {"symmetric": False}, "RTN W4A16 g128 asymmetric"),
    "awq-w4-asym": ("w4a16-awq", {}, "AWQ W4A16 g128 asymmetric"),
    "rtn-w4-sym-head": ("w4a16-rtn", {"ignore": []}, "RTN W4A16 g128 symmetric, lm_head quantized too"),
    "gptq-w4-sym-head": ("w4a16", {"ignore": []}, "GPTQ W4A16 g128 symmetric, lm_head quantized too"),
    "rtn-w8a8": ("w8a8", {"method": "rtn"}, "RTN W8A8 int8 (per-channel W, per-token A)"),
    "smoothquant-w8a8": ("w8a8", {}, "SmoothQuant W8A8 int8 (alpha 0.5)"),
    "fp8": ("fp8", {}, "FP8 e4m3 W8A8 (per-channel W, per-token A)"),
}
SEQ_LEN = 512


def run_one(name: str, reference: Path, max_tokens: int | None) -> dict[str, Any]:
    """Quantize a fresh model with one weight config and evaluate it (runs in a child process)."""
    import resource

    import torch

    from accel.data.corpus import evaluation_windows
    from accel.evaluation.agreement import evaluate_quality
    from accel.plugins import get_registry
    from accel.runtime.loaders import load_model
    from accel.tools.presets import get_preset
    from accel.tools.quantize import model_bytes, quantize_loaded

    preset, overrides, description = WEIGHT_CONFIGS[name]
    config = get_preset(preset)
    config.quantization = config.quantization.model_validate({**config.quantization.model_dump(), **overrides})
    model, tokenizer = load_model()
    result, _, _ = quantize_loaded(model, tokenizer, config, get_registry(), evaluate=False, progress=True)
    windows = evaluation_windows(tokenizer, SEQ_LEN, max_tokens=max_tokens)
    quality = evaluate_quality(model, windows, torch.load(reference), progress=True)
    return {
        "config": name, "description": description, "scheme": config.quantization.scheme_name(),
        "perplexity": quality.perplexity.perplexity, "top1_agreement": quality.top1_agreement,
        "tokens": quality.perplexity.num_tokens, "quantize_s": result.seconds,
        "calibration_tokens": result.calibration_tokens,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "size_mb": model_bytes(model) / 1e6,
    }


def run_reference(reference: Path, max_tokens: int | None) -> dict[str, Any]:
    import torch

    from accel.data.corpus import evaluation_windows
    from accel.evaluation.agreement import evaluate_quality
    from accel.runtime.loaders import load_model
    from accel.tools.quantize import model_bytes

    model, tokenizer = load_model()
    quality = evaluate_quality(model, evaluation_windows(tokenizer, SEQ_LEN, max_tokens=max_tokens), progress=True)
    torch.save(quality.top1, reference)
    return {
        "config": "fp32", "description": "full precision (reference)", "scheme": "w16a16",
        "perplexity": quality.perplexity.perplexity, "top1_agreement": 1.0,
        "tokens": quality.perplexity.num_tokens, "size_mb": model_bytes(model) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(WEIGHT_CONFIGS))
    parser.add_argument("--max-tokens", type=int, default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one config, one JSON line on stdout
        row = run_reference(args.reference, args.max_tokens) if args.one == "fp32" else run_one(
            args.one, args.reference, args.max_tokens)
        print("RESULT " + json.dumps(row))
        return
    unknown = set(args.configs) - set(WEIGHT_CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; known: {list(WEIGHT_CONFIGS)}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        reference = Path(tmp) / "fp32_top1.pt"
        for name in ["fp32", *args.configs]:
            command = [sys.executable, __file__, "--one", name, "--reference", str(reference)]
            if args.max_tokens:
                command += ["--max-tokens", str(args.max_tokens)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode != 0 or not lines:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(lines[-1].removeprefix("RESULT ")))
            print(f"{name}: perplexity {rows[-1]['perplexity']:.3f}", file=sys.stderr)
    base = rows[0]["perplexity"]
    for row in rows:
        row["delta_pct"] = 100 * (row["perplexity"] / base - 1)
    targets = _targets({row["config"]: row for row in rows})
    meta = {**environment(), "model": "SmolLM2-135M-Instruct (bundled, FP32)", "eval_seq_len": SEQ_LEN,
            "max_tokens": args.max_tokens,
            "targets": targets}
    columns = ["config", "description", "perplexity", "delta_pct", "top1_agreement", "size_mb", "quantize_s",
               "calibration_tokens", "peak_rss_gb", "tokens"]
    notes = "Targets (issue): " + "; ".join(f"{k}: {v}" for k, v in targets.items())
    write_results("quant_accuracy", "Quantization accuracy on the bundled model", columns, rows, meta, notes)


def _targets(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The issue's targets, each with the measured figure and whether it was met."""
    out: dict[str, str] = {}

    def loss_ratio(method: str, rtn: str) -> None:
        if method in rows and rtn in rows and rows[rtn]["delta_pct"] > 0:
            ratio = rows[method]["delta_pct"] / rows[rtn]["delta_pct"]
            out[f"{method} loses <= 0.5x of {rtn}"] = f"{ratio:.2f}x ({'met' if ratio <= 0.5 else 'missed'})"

    loss_ratio("gptq-w4-sym", "rtn-w4-sym")
    loss_ratio("awq-w4-asym", "rtn-w4-asym")
    for name, bound in (("smoothquant-w8a8", 1.0),):
        if name in rows:
            delta = rows[name]["delta_pct"]
            out[f"{name} within {bound}%"] = f"{delta:+.2f}% ({'met' if abs(delta) <= bound else 'missed'})"
    return out


if __name__ == "__main__":
    main()
