"""kv_runtime on CPU: the quality of each KV precision through the paged store on the bundled model, the cost of
decode attention over each precision (dequantization included) on this CPU, and what the evaluator then picks.

1. quality: bundled SmolLM2-135M (fp32 weights) decodes evaluation windows through the runtime (Generator) with a
   PagedKVCache at each precision, or a static cache format for the 'static-*' rows. Each window's first half is
   prefilled, the second half fed `--decode-chunk` tokens per step, each step's K/V stored before later steps read
   them. Against the fp32 paged cache (the reference, equal to the static 'none' cache): perplexity increase,
   relative logits error ||l - l_ref|| / ||l_ref|| over every scored position, top-1 agreement. 'int4-kivi' writes
   fp16 and migrates every full block to int4 KIVI after each step (the hot tail block stays fp16); 'pressure' gives
   an fp16 store 45% of the bytes it needs, so the pressure ladder demotes cold blocks (fp16 -> int8 -> int4 KIVI).
2. cpu_cost: one layer of the bundled shape (9 query heads, 3 KV heads, head_dim 64), one sequence of `context`
   random tokens, one decode query: the time of gather + reference attention (paged) or StaticKVCache.attend
   (static), and of the gather alone (the dequantization): the least of `--repeats` calls, formats taking turns (the
   machine is shared: the least-disturbed run); GB/s is stored K/V bytes over the time.
   copy_bandwidth_gbps: torch clone of 256 MiB, bytes read + written per second.
3. decisions: KVPrecisionEvaluator on these tables (and bench/results/kernels_attention.json for the H200 rows).

    python bench/kv_runtime.py [--windows 8] [--seq-len 512] [--threads 2] [--skip-quality]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from common import RESULTS, environment, markdown_table

from accel.data.corpus import corpus_fingerprint, evaluation_windows
from accel.integration.kv_runtime import KVPoolConfig, KVPrecision, KVStoreConfig, KVTier, PagedKVStore
from accel.integration.kv_runtime.evaluator import KVMeasurements, KVPrecisionEvaluator, KVWorkload
from accel.integration.kv_runtime.paged_cache import PagedKVCache
from accel.runtime import kv_ops
from accel.runtime.cpu import cpu_capability
from accel.runtime.generate import Generator
from accel.runtime.kv_cache import StaticKVCache
from accel.runtime.loaders import BUNDLED_MODEL, load_model
from accel.runtime.model import DecoderModel, from_hf
from accel.schema import CapabilityDescriptor
from accel.schema.io import atomic_write_text

PAGED = ["fp32", "bf16", "fp16", "fp8_e4m3", "int8", "int4"]
STATIC = ["none", "int8", "fp8", "int4"]
KIVI = KVPrecision(dtype="int4", granularity="kivi")
BLOCK_SIZE = 16
PRESSURE_SHARE = 0.45
QUALITY_COLUMNS = ["name", "kind", "perplexity", "perplexity_delta_pct", "logits_rel_error", "top1_agreement",
                   "bytes_per_token", "vs_fp16", "seconds"]
COST_COLUMNS = ["context", "name", "attention_us", "gather_us", "stored_bytes", "gbps", "vs_full"]
DECISION_COLUMNS = ["scenario", "device", "context", "batch", "choice", "tokens_per_s", "sequences", "runner_up"]


# ---------------------------------------------------------------------------------------------- quality


class QualityRun:
    """One KV configuration decoding the windows; accumulates NLL and the comparison with the reference."""

    def __init__(self, name: str, kind: str, generator: Generator, after_step: Callable[[], None] | None = None):
        self.name, self.kind, self.generator, self.after_step = name, kind, generator, after_step
        self.nll = 0.0
        self.tokens = 0
        self.error_sq = 0.0
        self.reference_sq = 0.0
        self.agree = 0
        self.seconds = 0.0
        self.bytes_per_token: list[float] = []

    def logits(self, batch: torch.Tensor, prefix: int, chunk: int) -> torch.Tensor:
        """Logits predicting positions prefix .. seq_len - 1 of each window: [B, seq_len - prefix, vocab]."""
        start = time.perf_counter()
        generator = self.generator
        predicted = [generator.prefill(batch[:, :prefix].tolist())[:, None]]  # [B, 1, vocab]
        if self.after_step:
            self.after_step()
        for begin in range(prefix, batch.shape[1] - 1, chunk):
            end = min(begin + chunk, batch.shape[1] - 1)
            predicted.append(generator.step(batch[:, begin:end]))
            if self.after_step:
                self.after_step()
        cache = generator.cache
        held = batch.shape[0] * (batch.shape[1] - 1)
        self.bytes_per_token.append(cache.nbytes() / held if isinstance(cache, PagedKVCache) else float("nan"))
        self.seconds += time.perf_counter() - start
        return torch.cat(predicted, dim=1).float()

    def score(self, logits: torch.Tensor, reference: torch.Tensor, targets: torch.Tensor) -> None:
        self.nll += F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="sum").item()
        self.tokens += targets.numel()
        self.error_sq += float((logits.double() - reference.double()).pow(2).sum())
        self.reference_sq += float(reference.double().pow(2).sum())
        self.agree += int((logits.argmax(-1) == reference.argmax(-1)).sum())


def quality_runs(model: DecoderModel, batch: int, max_seq: int) -> list[QualityRun]:
    runs = []
    for name in PAGED:
        cache = PagedKVCache.for_model(model, batch, max_seq, precision=KVPrecision.from_name(name),
                                       block_size=BLOCK_SIZE)
        runs.append(QualityRun(name, "paged", Generator(model, cache=cache)))
    kivi = PagedKVCache.for_model(model, batch, max_seq, precision=KVPrecision(dtype="fp16"), block_size=BLOCK_SIZE)

    def to_kivi() -> None:
        for sequence_id in kivi.store.sequences():
            kivi.store.switch_sequence_precision(sequence_id, KIVI)

    runs.append(QualityRun("int4-kivi", "paged", Generator(model, cache=kivi), after_step=to_kivi))
    full = PagedKVCache.for_model(model, batch, max_seq, precision=KVPrecision(dtype="fp16"), block_size=BLOCK_SIZE)
    squeezed = PagedKVCache.for_model(
        model, batch, max_seq, precision=KVPrecision(dtype="fp16"), block_size=BLOCK_SIZE,
        capacity_bytes=int(PRESSURE_SHARE * full.store.config.pools[KVTier.GPU].capacity_bytes),
    )
    runs.append(QualityRun("pressure", "policy", Generator(model, cache=squeezed)))
    for fmt in STATIC:
        runs.append(QualityRun(f"static-{fmt}", "static", Generator(model, max_batch=batch, max_seq=max_seq,
                                                                      kv_format=fmt)))
    return runs


def measure_quality(model: DecoderModel, windows: torch.Tensor, batch: int, chunk: int) -> tuple[list[dict], dict]:
    seq_len = windows.shape[1]
    prefix = seq_len // 2
    runs = quality_runs(model, batch, seq_len)
    reference_run = runs[0]
    with torch.no_grad():
        for first in range(0, windows.shape[0], batch):
            rows = windows[first : first + batch]
            targets = rows[:, prefix:]
            reference = reference_run.logits(rows, prefix, chunk)
            reference_run.score(reference, reference, targets)
            for run in runs[1:]:
                run.score(run.logits(rows, prefix, chunk), reference, targets)
            print(f"windows {first} .. {first + len(rows) - 1} done", flush=True)
    fp16_per_token = 2 * model.args.num_layers * model.args.num_kv_heads * model.args.head_dim * 2
    base = math.exp(reference_run.nll / reference_run.tokens)
    results = []
    for run in runs:
        ppl = math.exp(run.nll / run.tokens)
        per_token = statistics.fmean(run.bytes_per_token)
        results.append({
            "name": run.name,
            "kind": run.kind,
            "perplexity": ppl,
            "perplexity_delta_pct": 100 * (ppl / base - 1),
            "logits_rel_error": math.sqrt(run.error_sq / run.reference_sq),
            "top1_agreement": run.agree / run.tokens,
            "bytes_per_token": per_token,
            "vs_fp16": per_token / fp16_per_token,
            "seconds": run.seconds,
        })
    pressure = next(r for r in runs if r.name == "pressure").generator.cache
    assert isinstance(pressure, PagedKVCache)
    stats = pressure.store.get_stats()
    meta = {
        "model": BUNDLED_MODEL,
        "model_dtype": "float32",
        "windows": windows.shape[0],
        "seq_len": seq_len,
        "prefix_len": prefix,
        "scored_tokens": reference_run.tokens,
        "decode_chunk": chunk,
        "block_size": BLOCK_SIZE,
        "corpus": corpus_fingerprint(),
        "pressure_capacity_share": PRESSURE_SHARE,
        "pressure_counters": stats["counters"],
        "pressure_pages_by_precision": stats["tiers"]["gpu"]["pages_by_precision"],
    }
    return results, meta


# ---------------------------------------------------------------------------------------------- CPU cost


def fastest_seconds(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """The least time of `repeats` calls of each function, the functions taking turns so that load from other
    processes on a shared machine falls on all of them alike; the minimum is the run least disturbed."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, math.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def copy_bandwidth_gbps() -> float:
    source = torch.empty(64 * 2**20, dtype=torch.float32)  # 256 MiB
    source.fill_(1.0)
    seconds = fastest_seconds({"clone": source.clone}, 5)["clone"]
    return 2 * source.nbytes / seconds / 1e9


def paged_sequence(name: str, k: torch.Tensor, v: torch.Tensor) -> PagedKVStore:
    """One layer, one sequence holding K/V [h, L, d] at precision `name` (int4-kivi: written fp16, then migrated)."""
    target = KIVI if name == "int4-kivi" else KVPrecision.from_name(name)
    write = KVPrecision(dtype="fp16") if name == "int4-kivi" else target
    heads, length, dim = k.shape
    pool = KVPoolConfig(capacity_bytes=4 * length * heads * dim * 4 * 2 + 2**20)
    store = PagedKVStore(KVStoreConfig(num_layers=1, num_kv_heads=heads, head_dim=dim, block_size=BLOCK_SIZE,
                                       precision=write, pools={KVTier.GPU: pool}, pressure_ladder=[]))
    store.allocate_for_sequence("s", length)
    for index, block_id in enumerate(store.block_table("s")):
        part = slice(index * BLOCK_SIZE, (index + 1) * BLOCK_SIZE)
        store.write(block_id, 0, 0, k[:, part], v[:, part])
    if name == "int4-kivi":
        store.switch_sequence_precision("s", KIVI)
    return store


def context_calls(context: int) -> tuple[dict[str, Callable[[], Any]], dict[str, int]]:
    """The timed calls for one context (attention and gather per format) and each format's stored bytes."""
    heads, query_heads, dim = 3, 9, 64
    generator = torch.Generator().manual_seed(context)
    k, v = torch.randn(2, heads, context, dim, generator=generator)
    q = torch.randn(1, query_heads, 1, dim, generator=generator)
    lengths = torch.tensor([context])
    calls: dict[str, Callable[[], Any]] = {}
    stored: dict[str, int] = {}
    for name in [*PAGED, "int4-kivi"]:
        store = paged_sequence(name, k, v)
        stored[name] = store.get_stats()["tiers"]["gpu"]["used_bytes"]

        def gather(store: PagedKVStore = store) -> tuple[torch.Tensor, torch.Tensor]:
            return store.gather("s", 0, context)

        def attend(gather: Callable = gather) -> torch.Tensor:
            keys, values = gather()
            return kv_ops.cached_attention(q, keys[None], None, None, values[None], None, None, lengths, "none",
                                           dim**-0.5)

        calls[f"{name}/attention"], calls[f"{name}/gather"] = attend, gather
    for fmt in STATIC:
        cache = StaticKVCache(1, 1, heads, context, dim, kv_format=fmt, dtype=torch.bfloat16)
        cache.write_prompt(0, k[None].bfloat16(), v[None].bfloat16())
        cache.seq_lens.fill_(context)
        stored[f"static-{fmt}"] = cache.nbytes()
        calls[f"static-{fmt}/attention"] = lambda c=cache: c.attend(0, q.bfloat16(), lengths, dim**-0.5)
    return calls, stored


def measure_cpu_cost(contexts: list[int], repeats: int) -> list[dict]:
    rows = []
    for context in contexts:
        calls, stored = context_calls(context)
        seconds = fastest_seconds(calls, repeats)
        for name, nbytes in stored.items():
            attention = seconds[f"{name}/attention"]
            full = seconds["static-none/attention" if name.startswith("static-") else "fp16/attention"]
            gather_s = seconds.get(f"{name}/gather")
            rows.append({
                "context": context,
                "name": name,
                "attention_us": 1e6 * attention,
                "gather_us": None if gather_s is None else 1e6 * gather_s,
                "stored_bytes": nbytes,
                "gbps": nbytes / attention / 1e9,
                "vs_full": attention / full,
            })
        print(f"context {context} timed", flush=True)
    return rows


def cost_table(rows: list[dict], copy_gbps: float) -> dict:
    """The KVCostTable of the CPU rows (the evaluator's input)."""
    capability = cpu_capability()
    points = [
        {"batch": 1, "context": context, "gbps": {r["name"]: r["gbps"] for r in rows if r["context"] == context}}
        for context in sorted({r["context"] for r in rows})
    ]
    return {
        "device": capability.device_name,
        "device_type": "cpu",
        "copy_bandwidth_gbps": copy_gbps,
        "source": f"bench/kv_runtime.py on {capability.device_name} ({torch.get_num_threads()} threads)",
        "points": points,
    }


# ---------------------------------------------------------------------------------------------- decisions


LLAMA3_8B = {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128, "weight_bytes": 16_060_522_496}  # bf16 weights
H200 = CapabilityDescriptor(device_name="NVIDIA H200", device_type="cuda", total_memory_bytes=141 * 10**9,
                            source="spec sheet: 141 GB HBM3e")


def decisions(measurements: KVMeasurements, model: DecoderModel) -> list[dict]:
    evaluator = KVPrecisionEvaluator(measurements)
    cpu = cpu_capability()
    cpu = cpu.model_copy(update={"available_memory_bytes": min(cpu.available_memory_bytes, 16 * 2**30)})
    scenarios = [
        (f"{BUNDLED_MODEL} fp32", cpu, KVWorkload.from_model(model, BUNDLED_MODEL, context, batch))
        for context, batch in ((512, 1), (8192, 16), (8192, 256))
    ]
    if any(t.device_type == "cuda" for t in measurements.cost_tables):
        scenarios += [
            ("Llama-3-8B shapes bf16", H200, KVWorkload(model="llama-3-8b", context_len=context, batch_size=batch,
                                                        **LLAMA3_8B))
            for context, batch in ((4096, 16), (32768, 64), (131072, 32))
        ]
    rows = []
    for label, hardware, workload in scenarios:
        decision = evaluator.evaluate(workload, hardware)
        ranked = sorted((o for o in decision.options if o.admissible), key=lambda o: -(o.tokens_per_s or 0))
        chosen = next((o for o in decision.options if o.name == decision.precision), None)
        runner = next((o for o in ranked if o.name != decision.precision), None)
        rows.append({
            "scenario": label,
            "device": hardware.device_name,
            "context": workload.context_len,
            "batch": workload.batch_size,
            "choice": decision.precision,
            "tokens_per_s": None if chosen is None else chosen.tokens_per_s,
            "sequences": None if chosen is None else chosen.sequences,
            "runner_up": None if runner is None else f"{runner.name} ({runner.tokens_per_s:.4g} tok/s)",
            "reason": decision.reason,
            "options": [o.model_dump(mode="json") for o in decision.options],
        })
    return rows


# ---------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--decode-chunk", type=int, default=16)
    parser.add_argument("--contexts", default="512,2048,8192")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-quality", action="store_true", help="keep the quality section of the last run")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    start = time.perf_counter()
    path = RESULTS / "kv_runtime.json"
    previous = json.loads(path.read_text()) if path.is_file() else {}

    hf, tokenizer = load_model(dtype=torch.float32)
    model = from_hf(hf)
    if options.skip_quality:
        quality = previous["quality"]
    else:
        windows = evaluation_windows(tokenizer, options.seq_len)[: options.windows]
        rows, meta = measure_quality(model, windows, options.batch, options.decode_chunk)
        quality = {"meta": meta, "columns": QUALITY_COLUMNS, "rows": rows}
    cost_rows = measure_cpu_cost([int(c) for c in options.contexts.split(",")], options.repeats)
    copy_gbps = copy_bandwidth_gbps()
    cpu_cost = {"columns": COST_COLUMNS, "rows": cost_rows, "table": cost_table(cost_rows, copy_gbps)}
    data: dict[str, Any] = {"title": "kv_runtime: paged KV quality, CPU attention cost, precision decisions",
                            "meta": {**environment(), "copy_bandwidth_gbps": copy_gbps},
                            "quality": quality, "cpu_cost": cpu_cost}
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")  # the evaluator reads it back
    gpu = RESULTS / "kernels_attention.json"
    measurements = KVMeasurements.from_results(path, gpu if gpu.is_file() else None)
    data["decisions"] = {"columns": DECISION_COLUMNS, "rows": decisions(measurements, model)}
    data["meta"]["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
    write_markdown(data, RESULTS / "kv_runtime.md")


def write_markdown(data: dict, path: Path) -> None:
    meta = "\n".join(f"- {k}: {v}" for k, v in data["meta"].items())
    qmeta = "\n".join(f"- {k}: {v}" for k, v in data["quality"]["meta"].items())
    reasons = "\n".join(f"- {r['scenario']} @ {r['context']} x {r['batch']}: {r['reason']}"
                        for r in data["decisions"]["rows"])
    text = f"""# {data['title']}

{meta}

## Quality through the runtime (bundled model, against the fp32 paged cache)

{qmeta}

{markdown_table(QUALITY_COLUMNS, data['quality']['rows'])}

bytes_per_token: the paged cache's blocks (all 30 layers, K and V, scales included) over the tokens held at the end of
each batch, partial last blocks included (nan for static caches, which hold max_seq positions whatever the length).
vs_fp16: over the same tokens in fp16 without scales. 'int4-kivi': fp16 writes, full blocks migrated to int4 KIVI
after every step. 'pressure': fp16 writes into {PRESSURE_SHARE:.0%} of the bytes needed; the store demoted cold blocks
(counters above). 'static-*': the runtime's static cache formats (kv_ops), which the GPU decode kernel reads.

## Decode attention over one layer on this CPU (reference path, least of repeats)

{markdown_table(COST_COLUMNS, data['cpu_cost']['rows'])}

attention_us: gather (dequantize every page) + kv_ops.cached_attention for one query over `context` tokens, 9 query
heads, 3 KV heads, head_dim 64 (paged), or StaticKVCache.attend (static, bf16 'none'). gather_us: the gather alone.
gbps: stored bytes / attention time. vs_full: time over fp16 paged (static: over static-none).

## What the evaluator picks (KVPrecisionEvaluator, max quality loss 1%)

{markdown_table(DECISION_COLUMNS, data['decisions']['rows'])}

{reasons}

Quality is the bundled model's, measured above; CPU costs are the table above; the H200 rows take attention rates from
kernels_attention.json (accel-cuda's decode kernel over the static formats) and its measured copy bandwidth, and the
H200's memory from its spec sheet (141 GB). Llama-3-8B rows use its shapes, not its quality.
"""
    atomic_write_text(path, text)
    print(text)


if __name__ == "__main__":
    main()
