"""Accuracy of pruning on the bundled model: perplexity, loss against FP32, top-1 agreement with FP32.

    python bench/prune_accuracy.py                  # every config, full evaluation split
    python bench/prune_accuracy.py --max-tokens 4096 --configs magnitude-2:4 sparsegpt-2:4

Magnitude, Wanda and SparseGPT at 50% unstructured, 2:4 and 4:8, then SparseGPT 2:4 followed by W4 (RTN and
GPTQ, g128, keeping the mask). Calibration is the quantizers' default: 64 samples of 256 tokens of the bundled
corpus's calibration split. Each config runs in its own process (fresh model, clean peak-memory reading).
--max-tokens evaluates the first windows of the evaluation split only (recorded in the results' meta).
Writes bench/results/prune_accuracy.json and .md.
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

# name -> (pruning method, pattern, quantization preset applied after pruning or None, description)
CONFIGS: dict[str, tuple[str, str, str | None, str]] = {
    "magnitude-50%": ("magnitude", "unstructured", None, "magnitude, 50% unstructured (per row)"),
    "wanda-50%": ("wanda", "unstructured", None, "Wanda, 50% unstructured (per row)"),
    "sparsegpt-50%": ("sparsegpt", "unstructured", None, "SparseGPT, 50% unstructured"),
    "magnitude-2:4": ("magnitude", "2:4", None, "magnitude, 2:4"),
    "wanda-2:4": ("wanda", "2:4", None, "Wanda, 2:4"),
    "sparsegpt-2:4": ("sparsegpt", "2:4", None, "SparseGPT, 2:4"),
    "magnitude-4:8": ("magnitude", "4:8", None, "magnitude, 4:8"),
    "wanda-4:8": ("wanda", "4:8", None, "Wanda, 4:8"),
    "sparsegpt-4:8": ("sparsegpt", "4:8", None, "SparseGPT, 4:8"),
    "sparsegpt-2:4+rtn-w4": ("sparsegpt", "2:4", "w4a16-rtn", "SparseGPT 2:4, then RTN W4A16 g128 sym"),
    "sparsegpt-2:4+gptq-w4": ("sparsegpt", "2:4", "w4a16", "SparseGPT 2:4, then GPTQ W4A16 g128 sym"),
}
SEQ_LEN = 512


def run_one(name: str, reference: Path, max_tokens: int | None) -> dict[str, Any]:
    """Prune (and quantize) a fresh model with one config and evaluate it (runs in a child process)."""
    import resource

    import torch

    from accel.data.corpus import evaluation_windows
    from accel.evaluation.agreement import evaluate_quality
    from accel.plugins import get_registry
    from accel.runtime.loaders import load_model
    from accel.schema import AccelConfig, QuantizationProfile, SparsityConfig
    from accel.sparsity.pipeline import prune_model
    from accel.tools.presets import get_preset
    from accel.tools.prune import compact_bytes, sparsity_by_kind
    from accel.tools.quantize import model_bytes, quantize_loaded

    method, pattern, preset, description = CONFIGS[name]
    sparsity = SparsityConfig(pattern=pattern, method=method, **({"ratio": 0.5} if ":" not in pattern else {}))
    profile = get_preset(preset).quantization if preset else QuantizationProfile()
    profile = profile.model_validate({**profile.model_dump(), "sparsity_pattern": pattern, "sparsity_ratio": 0.5})
    model, tokenizer = load_model()
    registry = get_registry()
    pruned = prune_model(model, tokenizer, sparsity, registry, calibration=profile, progress=True)
    quantize_s = None
    if preset:
        config = AccelConfig(quantization=profile, sparsity=sparsity)
        result, _, _ = quantize_loaded(model, tokenizer, config, registry, evaluate=False, progress=True)
        quantize_s = result.seconds
        for name_, mask in pruned.masks.items():  # the mask survived quantization
            weight = model.get_submodule(name_).dequantized_weight(torch.float32)
            assert bool((weight[~mask] == 0).all()), f"{name_}: pruned weights are non-zero after quantization"
    windows = evaluation_windows(tokenizer, SEQ_LEN, max_tokens=max_tokens)
    quality = evaluate_quality(model, windows, torch.load(reference), progress=True)
    return {
        "config": name, "description": description, "perplexity": quality.perplexity.perplexity,
        "top1_agreement": quality.top1_agreement, "sparsity": sparsity_by_kind(pruned.masks)["all"],
        "tokens": quality.perplexity.num_tokens, "prune_s": pruned.seconds, "quantize_s": quantize_s,
        "calibration_tokens": pruned.calibration_tokens,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        "size_mb": model_bytes(model) / 1e6,
        "compact_mb": compact_bytes(model, pruned.masks, pattern, sparsity.block_shape) / 1e6,
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
        "config": "fp32", "description": "dense full precision (reference)", "perplexity":
        quality.perplexity.perplexity, "top1_agreement": 1.0, "sparsity": 0.0,
        "tokens": quality.perplexity.num_tokens, "size_mb": model_bytes(model) / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS))
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="evaluate on the first windows of the evaluation split only (a documented subset)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--reference", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # child process: one config, one JSON line on stdout
        row = run_reference(args.reference, args.max_tokens) if args.one == "fp32" else run_one(
            args.one, args.reference, args.max_tokens)
        print("RESULT " + json.dumps(row))
        return
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; known: {list(CONFIGS)}")
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
        row["loss"] = row["perplexity"] - base
    targets = _targets({row["config"]: row for row in rows})
    meta = {**environment(), "model": "SmolLM2-135M-Instruct (bundled, FP32)", "eval_seq_len": SEQ_LEN,
            "eval_tokens": rows[0]["tokens"], "eval_subset": args.max_tokens is not None,
            "calibration": "64 x 256 tokens, bundled calibration split", "targets": targets}
    columns = ["config", "description", "perplexity", "loss", "top1_agreement", "sparsity", "size_mb", "compact_mb",
               "prune_s", "quantize_s", "calibration_tokens", "peak_rss_gb", "tokens"]
    notes = ("loss = perplexity - dense perplexity. size_mb: as stored (dense-with-zeros FP16 or packed W4); "
             "compact_mb: each pruned layer as kept values + N:M indices or bitmask. "
             "Targets (issue): " + "; ".join(f"{k}: {v}" for k, v in targets.items()))
    write_results("prune_accuracy", "Pruning accuracy on the bundled model", columns, rows, meta, notes)


def _targets(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """SparseGPT and Wanda each lose at most a fifth of magnitude's perplexity loss, at 2:4 and 50% unstructured."""
    out: dict[str, str] = {}
    for pattern in ("2:4", "50%"):
        magnitude = rows.get(f"magnitude-{pattern}")
        for method in ("sparsegpt", "wanda"):
            row = rows.get(f"{method}-{pattern}")
            if magnitude and row and magnitude["loss"] > 0:
                ratio = row["loss"] / magnitude["loss"]
                out[f"{method}-{pattern} loses <= 0.2x of magnitude"] = (
                    f"{ratio:.2f}x ({'met' if ratio <= 0.2 else 'missed'})"
                )
    return out


if __name__ == "__main__":
    main()
