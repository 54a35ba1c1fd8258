"""Decode attention over a static KV cache on one GPU: bf16 torch SDPA vs accel-cuda's flash-decoding kernel on
each cache format (none = bf16, int8, fp8, int4).

Llama-3-8B attention: 32 query heads over 8 KV heads (GQA 4), head_dim 128, one new token per row (T = 1);
batch 1 and 16; contexts 1k, 8k and 32k, every row full (seq_lens = context = cache capacity), random data.

Timing: CALLS calls per CUDA graph cycling over SETS copies of the cache (together at least 3x the L2, so every
call reads its cache from device memory), do_bench median of the graph replays, microseconds per call. Effective
GB/s: the bytes a call must move (the K and V cache of the context, with scales and zero points, plus q and the
output) over its time; floor_us: the same bytes over the measured copy bandwidth. Speed-ups are over the faster
of the two bf16 SDPA baselines (default backend choice, and flash forced) on the same card in the same run.

    python bench/kernels_attention.py            # the table -> bench/results/kernels_attention.json / .md
    python bench/kernels_attention.py --sweep F  # first time launch variants at 32k context (JSON to F)
    python bench/kernels_attention.py --sweep F --no-table  # the sweep alone (about 2-3 minutes on an H200)
"""

from __future__ import annotations

import argparse
import functools
import math
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import triton
from common import environment, write_results
from gpu_timing import copy_bandwidth, rel_err
from gpu_timing import graph_us as _graph_us
from torch.nn.attention import SDPBackend, sdpa_kernel

from accel.runtime.kv_ops import KV_FORMATS, cached_attention, kv_quantize, kv_token_bytes

HQ, HKV, D = 32, 8, 128
BATCHES = [1, 16]
CONTEXTS = [1024, 8192, 32768]
CALLS = 8


def graph_us(calls: list[Callable[[], object]], quick: bool = False) -> float:
    """Microseconds per call over CALLS calls in a graph (gpu_timing.graph_us)."""
    return _graph_us(calls, CALLS, quick)


def call_bytes(fmt: str, batch: int, context: int) -> int:
    return 2 * batch * HKV * context * kv_token_bytes(fmt, D) + 2 * batch * HQ * D * 2


def make_cache(fmt: str, batch: int, context: int, seed: int) -> list[torch.Tensor | None]:
    """[k_codes, k_scale, k_zero, v_codes, v_scale, v_zero] of a full cache, quantized from random bf16 data."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    stored: list[torch.Tensor | None] = []
    for _ in range(2):
        x = torch.randn(batch, HKV, context, D, generator=gen, device="cuda", dtype=torch.bfloat16)
        stored += list(kv_quantize(x, fmt))
        del x
    return stored


def sets_for(fmt: str, batch: int, context: int, l2_bytes: int) -> int:
    return max(2, min(64, math.ceil(3 * l2_bytes / call_bytes(fmt, batch, context))))


def v2_chunk(batch: int, context: int, block_n: int, sms: int) -> int:
    """The v2 plan's chunk (power of two, about 4 programs per SM): the baseline for the v3 one-wave chunk."""
    want = max(1, math.ceil(4 * sms / (batch * HKV)))
    return max(
        block_n, 1 << (math.ceil(context / want) - 1).bit_length(), 1 << (math.ceil(context / 64) - 1).bit_length()
    )


def sweep_configs(plan_cfg, fmt: str, chunk_v2: int | None = None):
    """The plan and variants around it: chunk, stages, tile, the register cap, and the CUDA-core kernel ("fma", no
    int4 path) at 64 / 32 tokens per tile (at 128 it spills: 9 KB of stack)."""
    from dataclasses import replace

    from accel_cuda.kernels.attention import AttnConfig

    configs = {
        "plan": plan_cfg,
        "chunk/2": replace(plan_cfg, chunk=max(plan_cfg.block_n, plan_cfg.chunk // 2)),
        "chunk*2": replace(plan_cfg, chunk=plan_cfg.chunk * 2),
        "stages3": replace(plan_cfg, num_stages=3),
        "bn64": replace(plan_cfg, block_n=64, max_regs=None),
        "bn32": AttnConfig(chunk=plan_cfg.chunk, block_n=32, block_r=plan_cfg.block_r),
        "chunk/2-stages3": replace(plan_cfg, chunk=max(plan_cfg.block_n, plan_cfg.chunk // 2), num_stages=3),
        "regs168": replace(plan_cfg, max_regs=None if plan_cfg.max_regs else 168),
    }
    if chunk_v2 is not None:
        configs["chunk-v2"] = replace(plan_cfg, chunk=chunk_v2)
    if fmt == "int8":  # scores on the int8 tensor cores (query as an int8 pair)
        qk8 = replace(plan_cfg, qk_int8=True)
        configs.update({"qk8": qk8, "qk8-nocap": replace(qk8, max_regs=None), "qk8-stages3": replace(qk8, num_stages=3),
                        "qk8-chunk/2": replace(qk8, chunk=max(qk8.block_n, qk8.chunk // 2))})
    # 8 warps a program: half the registers a thread, twice the warps per program (KERNEL_NOTES.md v5).
    w8 = replace(plan_cfg, num_warps=8, max_regs=None)
    more = plan_cfg.block_n * -(-plan_cfg.chunk * 3 // (2 * plan_cfg.block_n))  # fewer programs fit: longer chunks
    configs.update({"w8": w8, "w8-regs128": replace(w8, max_regs=128), "w8-chunk*1.5": replace(w8, chunk=more),
                    "w8-regs128-chunk*1.5": replace(w8, max_regs=128, chunk=more)})
    if fmt != "int4":
        fma = replace(plan_cfg, variant="fma", block_r=4, max_regs=None)
        configs["fma-bn64"] = replace(fma, block_n=64)
        configs["fma-bn32"] = replace(fma, block_n=32)
    return configs


def run_sweep(path: str, sms: int, l2_bytes: int, formats: tuple[str, ...] = KV_FORMATS) -> None:
    import json

    from accel_cuda.kernels.attention import cached_attention as kernel
    from accel_cuda.kernels.attention import plan

    results = []
    for batch in BATCHES:
        context = CONTEXTS[-1]
        for fmt in formats:
            cache = make_cache(fmt, batch, context, seed=1)
            sets = [cache] + [
                [t.clone() if t is not None else None for t in cache]
                for _ in range(sets_for(fmt, batch, context, l2_bytes) - 1)
            ]
            q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
            lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            base = plan(batch, HKV, HQ // HKV, context, D, fmt, sms)
            row = {"batch": batch, "fmt": fmt}
            for name, cfg in sweep_configs(base, fmt, v2_chunk(batch, context, base.block_n, sms)).items():
                calls = [functools.partial(kernel, q, *s, lens, fmt, D**-0.5, config=cfg) for s in sets]
                try:
                    row[name] = graph_us(calls, quick=True)
                except Exception as exc:  # a variant that fails to compile is reported, not fatal
                    row[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            results.append(row)
            print("sweep", row, flush=True)
            del sets, cache
    with open(path, "w") as f:
        json.dump(results, f, indent=1, default=str)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", metavar="JSON", help="first time launch variants at 32k context")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    parser.add_argument("--formats", default=",".join(KV_FORMATS), help="cache formats the sweep times")
    args = parser.parse_args()

    from accel_cuda.kernels.attention import cached_attention as kernel
    from accel_cuda.kernels.attention import plan

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms, l2_bytes = props.multi_processor_count, props.L2_cache_size
    if args.sweep:
        run_sweep(args.sweep, sms, l2_bytes, tuple(args.formats.split(",")))
    if args.no_table:
        return
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, L2 {l2_bytes >> 20} MiB, copy bandwidth {bw:.2f} TB/s", flush=True)
    scale = D**-0.5
    rows = []
    for batch in BATCHES:
        for context in CONTEXTS:
            q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
            lens = torch.full((batch,), context, dtype=torch.int32, device="cuda")
            row: dict[str, object] = {"batch": batch, "context": context}
            check = batch == 1 or context == CONTEXTS[0]
            for fmt in KV_FORMATS:
                cache = make_cache(fmt, batch, context, seed=context + batch)
                n_sets = sets_for(fmt, batch, context, l2_bytes)
                sets = [cache] + [[t.clone() if t is not None else None for t in cache] for _ in range(n_sets - 1)]
                ours = [functools.partial(kernel, q, *s, lens, fmt, scale) for s in sets]
                if check:
                    ref = cached_attention(q.float(), *cache, lens, fmt, scale)
                    row[f"{fmt}_err"] = rel_err(ours[0](), ref)
                if fmt == "none":
                    sdpa = [
                        functools.partial(F.scaled_dot_product_attention, q, s[0], s[3], scale=scale, enable_gqa=True)
                        for s in sets
                    ]
                    row["sdpa_us"] = graph_us(sdpa)
                    try:
                        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                            row["sdpa_flash_us"] = graph_us(sdpa)
                    except RuntimeError as exc:
                        print(f"flash SDPA unavailable: {exc}")
                    if check:
                        row["sdpa_err"] = rel_err(sdpa[0](), ref)
                row[f"{fmt}_us"] = graph_us(ours)
                row[f"{fmt}_GBps"] = call_bytes(fmt, batch, context) / (row[f"{fmt}_us"] * 1e-6) / 1e9
                row[f"{fmt}_floor_us"] = call_bytes(fmt, batch, context) / (bw * 1e12) * 1e6
                del sets, cache, ours
            bf16 = min(v for k, v in row.items() if k in ("sdpa_us", "sdpa_flash_us"))
            row["bf16_us"] = bf16
            row["bf16_GBps"] = call_bytes("none", batch, context) / (bf16 * 1e-6) / 1e9
            for fmt in KV_FORMATS:
                row[f"x_{fmt}"] = bf16 / row[f"{fmt}_us"]
            cfg = plan(batch, HKV, HQ // HKV, context, D, "int8", sms)
            row["plan"] = (
                f"{cfg.variant} chunk{cfg.chunk} bn{cfg.block_n} br{cfg.block_r} w{cfg.num_warps} s{cfg.num_stages}"
                f" r{cfg.max_regs}"
            )
            rows.append(row)
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    columns = [
        "batch",
        "context",
        "sdpa_us",
        "sdpa_flash_us",
        "none_us",
        "int8_us",
        "fp8_us",
        "int4_us",
        "x_none",
        "x_int8",
        "x_fp8",
        "x_int4",
        "bf16_GBps",
        "none_GBps",
        "int8_GBps",
        "fp8_GBps",
        "int4_GBps",
        "int4_floor_us",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": sms,
        "l2_mib": l2_bytes >> 20,
        "copy_bandwidth_tbps": round(bw, 3),
        "shape": f"{HQ} query heads, {HKV} KV heads, head_dim {D}, T=1, every row full",
        "timing": f"CUDA graph of >= {CALLS} calls over cache copies totalling >= 3x L2, do_bench median, per call",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "sdpa_us: torch SDPA on the bf16 cache (enable_gqa, backend of torch's choice); sdpa_flash_us: flash forced. "
        "none/int8/fp8/int4_us: accel-cuda's flash-decoding kernel on that cache format (none = bf16). x_<fmt>: "
        "the faster SDPA time over ours. <fmt>_GBps: the K/V cache bytes (codes, scales, zero points) plus q and "
        "the output, over the time. int4_floor_us: int4's bytes over the measured copy bandwidth. Errors (JSON): "
        "relative to the fp32 reference on the same stored cache."
    )
    write_results(
        "kernels_attention",
        f"Decode attention on {props.name}: microseconds per call, speed-up over bf16",
        columns,
        rows,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
