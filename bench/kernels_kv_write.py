"""KV cache write of one layer on one GPU: core's reference torch chain vs accel-cuda's fused Triton kernel.

The reference (kv_ops.kv_cache_write: kv_quantize, then a scatter per stored tensor) runs ~22 small kernels for K
and V; the fused kernel one launch. Every cache format (none = bf16, int8, fp8, int4).

Llama-3-8B KV shapes: 8 KV heads, head_dim 128, bf16 K/V laid out as the model makes them ([B, T, H, D] in memory);
decode (T = 1) at batch 1, 16 and 64, and a 2k-token prefill at batch 1, into caches of 2048 positions; each
decode row writes at its own position.

Timing: CALLS writes per CUDA graph cycling over LAYERS per-layer caches (as a decode step writes each layer's
cache once), do_bench median of the replays, microseconds per write (gpu_timing.graph_us): device time, as in a
captured decode step. eager_us: CALLS writes issued eagerly and synchronized, per write, i.e. host launch time
where it bounds (the prefill is not captured). step_ms: the graph time saved per step (or per prefill) of a
32-layer model, (ref_us - fused_us) * 32. exact: the fused kernel's stores equal the reference's byte for byte.

    python bench/kernels_kv_write.py            # the table -> bench/results/kernels_kv_write.json / .md
    python bench/kernels_kv_write.py --quick    # shorter timing (5 ms warm-up, 30 ms of replays)
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import triton
from common import environment, write_results
from gpu_timing import fused_vs_reference

from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize, kv_token_bytes

HKV, D, CAPACITY = 8, 128, 2048
CASES = [("decode", 1, 1), ("decode", 16, 1), ("decode", 64, 1), ("prefill", 1, 2048)]  # (phase, batch, T)
MODEL_LAYERS = 32  # Llama-3-8B: the per-step saving is per layer times this
LAYERS = 4  # per-layer caches the timed calls cycle over
CALLS = 32


def make_stores(fmt: str, batch: int) -> list[torch.Tensor | None]:
    """[k_codes, k_scale, k_zero, v_codes, v_scale, v_zero] of one layer: batch rows of CAPACITY positions, zeroed
    as StaticKVCache allocates them."""
    template = kv_quantize(torch.zeros(1, 1, 1, D, dtype=torch.bfloat16, device="cuda"), fmt)
    parts = [
        None if p is None else torch.zeros(batch, HKV, CAPACITY, p.shape[-1], dtype=p.dtype, device="cuda")
        for p in template
    ]
    return parts + [None if p is None else p.clone() for p in parts]


def make_inputs(batch: int, tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """K and V [B, H, T, D] (bf16, [B, T, H, D] in memory) and positions [B, T]: decode rows at ragged lengths,
    the prefill at 0 .. T - 1."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    k, v = (torch.randn(batch, tokens, HKV, D, generator=gen, device="cuda").transpose(1, 2).bfloat16() for _ in "kv")
    if tokens == 1:
        positions = torch.randint(0, CAPACITY, (batch, 1), generator=gen, device="cuda")
    else:
        positions = torch.arange(tokens, device="cuda").expand(batch, tokens)
    return k, v, positions


def exact(fmt: str, batch: int, tokens: int, kernel: Callable[..., None]) -> bool:
    """The kernel's stores equal the reference's, byte for byte, on one write."""
    k, v, positions = make_inputs(batch, tokens, seed=99)
    ours, ref = make_stores(fmt, batch), make_stores(fmt, batch)
    kernel(k, v, positions, *ours, fmt)
    kv_cache_write(k, v, positions, *ref, fmt)
    return all(
        a is None or torch.equal(a.view(torch.uint8), b.view(torch.uint8)) for a, b in zip(ours, ref, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()

    from accel_cuda.kernels.kv_write import kv_cache_write as kernel
    from accel_cuda.kernels.kv_write import plan

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    rows = []
    for phase, batch, tokens in CASES:
        k, v, positions = make_inputs(batch, tokens, seed=batch + tokens)
        for fmt in KV_FORMATS:
            layers = [make_stores(fmt, batch) for _ in range(LAYERS)]
            ref = [functools.partial(kv_cache_write, k, v, positions, *s, fmt) for s in layers]
            ours = [functools.partial(kernel, k, v, positions, *s, fmt) for s in layers]
            timed = fused_vs_reference(ref, ours, CALLS, args.quick)
            # Bytes a write must move: K/V in (bf16) and the stored codes, scales and zero points out.
            moved = 2 * batch * HKV * tokens * (D * 2 + kv_token_bytes(fmt, D))
            cfg = plan(tokens, D)
            row = {
                "phase": phase,
                "batch": batch,
                "tokens": tokens,
                "fmt": fmt,
                **timed,
                "step_ms": (timed["ref_us"] - timed["fused_us"]) * MODEL_LAYERS / 1e3,
                "fused_GBps": moved / (timed["fused_us"] * 1e-6) / 1e9,
                "exact": exact(fmt, batch, tokens, kernel),
                "plan": f"bt{cfg.block_t} w{cfg.num_warps}",
            }
            rows.append(row)
            print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
            del layers, ref, ours
    columns = [
        "phase",
        "batch",
        "tokens",
        "fmt",
        "ref_us",
        "fused_us",
        "x_graph",
        "ref_eager_us",
        "fused_eager_us",
        "x_eager",
        "step_ms",
        "fused_GBps",
        "exact",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "shape": f"{HKV} KV heads, head_dim {D}, bf16 K/V, caches of {CAPACITY} positions",
        "timing": f"CUDA graph of {CALLS} writes over {LAYERS} layer caches, do_bench median, per write",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "ref_us: core's reference kv_cache_write (kv_quantize + scatter per stored tensor) in a CUDA graph; "
        "fused_us: accel-cuda's Triton kernel, one launch for K and V. *_eager_us: the same writes issued eagerly "
        "(host launch time included). step_ms: graph time saved per step of a 32-layer model. fused_GBps: K/V read "
        "plus codes, scales and zero points written, over fused_us. exact: stores equal byte for byte."
    )
    write_results(
        "kernels_kv_write",
        f"KV cache write per layer on {props.name}: reference torch chain vs fused kernel, microseconds",
        columns,
        rows,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
