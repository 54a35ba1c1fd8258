"""KV cache quantization quality on the bundled model: perplexity with a quantized cache vs the full-precision one.

Each evaluation window's first half is prefilled into a QuantizedKVCache and its second half decoded in chunks
(accel.quantization.kv_quant.evaluate_kv_perplexity), so the delta isolates KV quantization. Bytes per token are
the steady state (kv_cache_schema: every token quantized, over all layers, K and V) and, measured, what the cache
held at the end of a window, full-precision residual included.

    python bench/kv_quality.py [--windows 12] [--seq-len 512] [--decode-chunk 16] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers
from common import environment, write_results

from accel.data.corpus import corpus_fingerprint, evaluation_windows
from accel.quantization.kv_quant import (
    RESIDUAL_LENGTH,
    KVArgs,
    KVQuantArgs,
    evaluate_kv_perplexity,
    kv_args,
    kv_cache_schema,
)
from accel.runtime.loaders import BUNDLED_MODEL, load_model

FULL = KVArgs(KVQuantArgs(16), KVQuantArgs(16))
# name -> (prefill args, decode args)
CONFIGS: dict[str, tuple[KVArgs, KVArgs]] = {
    "full precision": (FULL, FULL),
    "int8 per-token": (kv_args(8), kv_args(8)),
    "fp8 e4m3 per-token": (kv_args(8, "float"), kv_args(8, "float")),
    "int4 KIVI asym": (kv_args(4, strategy="kivi"), kv_args(4, strategy="kivi")),
    "int4 per-token asym": (kv_args(4), kv_args(4)),
    "prefill int8 / decode int4 KIVI": (kv_args(8, strategy="kivi"), kv_args(4, strategy="kivi")),
}
COLUMNS = ["config", "perplexity", "delta_%", "scored_tokens", "bytes_per_token", "vs_fp16", "measured_bytes_per_token"]


def describe(args: KVArgs) -> str:
    """'int4 asym K/channel V/token' style summary of one phase's args."""
    keys, values = args
    if not keys.quantizes:
        return "16-bit"
    precision = "fp8" if keys.is_fp8 else f"int{keys.bits} {'sym' if keys.symmetric else 'asym'}"
    return f"{precision} K/{keys.granularity} V/{values.granularity}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=12, help="evaluation windows (of 36 at seq-len 512)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--decode-chunk", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)

    model, tokenizer = load_model(device=options.device)
    windows = evaluation_windows(tokenizer, options.seq_len)[: options.windows]  # [n, seq_len]
    rows, reference = [], None
    start = time.perf_counter()
    for name, (prefill, decode) in CONFIGS.items():
        result = evaluate_kv_perplexity(
            model, windows, prefill, decode, decode_chunk=options.decode_chunk, batch_size=options.batch_size
        )
        reference = reference or result
        schema = kv_cache_schema(model.config, decode, block_size=RESIDUAL_LENGTH)
        rows.append({
            "config": name,
            "prefill": describe(prefill),
            "decode": describe(decode),
            "perplexity": result.perplexity,
            "delta_%": 100 * (result.perplexity / reference.perplexity - 1),
            "scored_tokens": result.num_tokens,
            "bytes_per_token": schema.bytes_per_token,
            "vs_fp16": schema.bytes_per_token / result.memory["fp16_bytes_per_token"],
            "measured_bytes_per_token": result.memory["bytes_per_token"],
            "seconds": result.seconds,
        })
        print(f"{name}: perplexity {result.perplexity:.4f} in {result.seconds:.0f} s", flush=True)

    meta = {
        "model": BUNDLED_MODEL,
        "model_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "windows": len(windows),
        "seq_len": options.seq_len,
        "prefix_len": reference.prefix_len,
        "scored_tokens": reference.num_tokens,
        "decode_chunk": options.decode_chunk,
        "residual_length": RESIDUAL_LENGTH,
        "scale_dtype": "fp32",
        "corpus": corpus_fingerprint(),
        "transformers": transformers.__version__,
        "seconds": round(time.perf_counter() - start, 1),
        **environment(),
    }
    notes = (
        "Perplexity of each window's second half: the first half is prefilled into the quantized cache, the second "
        f"decoded {options.decode_chunk} tokens per forward, each chunk's K/V quantized before later chunks read "
        "them (the same K/V as one token per step). delta_% is against the full-precision row, same procedure. "
        "bytes_per_token: the steady-state cache (KVCacheSchema of the decode args, per-channel scales per "
        f"{RESIDUAL_LENGTH} tokens, fp32 scales and zero points) over 30 layers, K and V; the full-precision row "
        "stores the model's dtype. vs_fp16: against the same cache in fp16. measured_bytes_per_token: "
        "QuantizedKVCache.memory_report() at the end of a window, the full-precision residual of up to "
        f"{RESIDUAL_LENGTH - 1} per-channel key tokens included."
    )
    write_results("kv_quality", "KV cache quantization: perplexity and bytes per token", COLUMNS, rows, meta, notes)


if __name__ == "__main__":
    main()
