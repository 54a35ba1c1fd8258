"""RoPE + KV cache write at decode on one GPU: the two kernels the step ran (rope.py, then kv_write.py) vs accel-cuda's
fused rotary_kv_cache_write (one launch), every cache format.

Llama-3-8B attention shapes: 32 query and 8 KV heads, head_dim 128; q, k and v are views into the fused qkv output
[B, 1, 6144] (bf16), cos / sin [1, 1, 128]; decode (T = 1) at batch 1, 16 and 64 into caches of 2048 positions, each
row at its own position. Timing as kernels_kv_write.py: CALLS calls per CUDA graph over LAYERS per-layer caches,
do_bench median, microseconds per layer (ref_us = the two unfused kernels; fused_us = one launch); step_ms = the graph
time saved per step of a 32-layer model; exact = rotated q and every store equal to the unfused kernels' bytes.

    python bench/kernels_rope_kv_write.py   # -> bench/results/kernels_rope_kv_write.json / .md
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import triton
from common import environment, write_results
from gpu_timing import fused_vs_reference
from kernels_kv_write import CALLS, CAPACITY, LAYERS, MODEL_LAYERS, make_stores

from accel.runtime.kv_ops import KV_FORMATS

H, HKV, D = 32, 8, 128
BATCHES = (1, 16, 64)


def make_inputs(batch: int, seed: int):
    """q [B, 1, H, D], k and v [B, 1, HKV, D] as views of one qkv row, cos / sin [1, 1, D], positions [B, 1]."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    qkv = torch.randn(batch, 1, (H + 2 * HKV) * D, generator=gen, device="cuda").bfloat16()
    q, k, v = qkv.split([H * D, HKV * D, HKV * D], dim=-1)
    angles = torch.rand(1, 1, D // 2, generator=gen, device="cuda") * 6.28
    cos, sin = (torch.cat([f(angles)] * 2, dim=-1).bfloat16() for f in (torch.cos, torch.sin))
    positions = torch.randint(0, CAPACITY, (batch, 1), generator=gen, device="cuda")
    return q.view(batch, 1, H, D), k.view(batch, 1, HKV, D), v.view(batch, 1, HKV, D), cos, sin, positions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()
    from accel_cuda.kernels import kv_cache_write, rotary_embedding, rotary_kv_cache_write

    def unfused(q, k, v, cos, sin, positions, *stores, fmt):
        q_rot, k_rot = rotary_embedding(q, k, cos, sin)
        kv_cache_write(k_rot.transpose(1, 2), v.transpose(1, 2), positions, *stores, fmt)
        return q_rot

    def fused(q, k, v, cos, sin, positions, *stores, fmt):
        return rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt)

    props = torch.cuda.get_device_properties(0)
    started = time.perf_counter()
    rows = []
    for batch in BATCHES:
        inputs = make_inputs(batch, seed=batch)
        for fmt in KV_FORMATS:
            layers = [make_stores(fmt, batch) for _ in range(LAYERS)]
            ref = [functools.partial(unfused, *inputs, *s, fmt=fmt) for s in layers]
            ours = [functools.partial(fused, *inputs, *s, fmt=fmt) for s in layers]
            timed = fused_vs_reference(ref, ours, CALLS, args.quick)
            a, b = make_stores(fmt, batch), make_stores(fmt, batch)
            qa, qb = unfused(*inputs, *a, fmt=fmt), fused(*inputs, *b, fmt=fmt)
            same = torch.equal(qa.view(torch.int16), qb.view(torch.int16)) and all(
                x is None or torch.equal(x.view(torch.uint8), y.view(torch.uint8)) for x, y in zip(a, b, strict=True)
            )
            row = {"batch": batch, "fmt": fmt, **timed,
                   "step_ms": (timed["ref_us"] - timed["fused_us"]) * MODEL_LAYERS / 1e3, "exact": same}
            rows.append(row)
            print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
    columns = ["batch", "fmt", "ref_us", "fused_us", "x_graph", "ref_eager_us", "fused_eager_us", "x_eager", "step_ms",
               "exact"]
    meta = {**environment(), "triton": triton.__version__, "sm_count": props.multi_processor_count,
            "shape": f"{H} query / {HKV} KV heads, head_dim {D}, bf16, caches of {CAPACITY} positions, T = 1",
            "timing": f"CUDA graph of {CALLS} calls over {LAYERS} layer caches, do_bench median, per layer",
            "seconds": round(time.perf_counter() - started, 1)}
    write_results("kernels_rope_kv_write",
                  f"RoPE + KV cache write per layer at decode on {props.name}: two kernels vs one, microseconds",
                  columns, rows, meta,
                  "ref_us: accel-cuda's rotary_embedding then kv_cache_write kernels (what the step ran before); "
                  "fused_us: rotary_kv_cache_write, one launch. *_eager_us: issued eagerly (host launch time "
                  "included). step_ms: graph time saved per step of a 32-layer model. exact: rotated q and the "
                  "stores equal the two kernels' byte for byte.")


if __name__ == "__main__":
    main()
