"""silu_and_mul and add_rms_norm on one GPU: the reference torch chains vs accel-cuda's fused Triton kernels.

silu_and_mul: the reference (act_ops.silu_and_mul: split, silu, mul) runs 2 kernels, the fused one launch; 32 per
Llama-3-8B forward (one per layer). add_rms_norm: the reference (norm_ops.add_rms_norm: the add, then rms_norm's ~7
kernels) vs one launch; 64 per forward (before each layer's two norms but the first layer's first). Its `unfused_us`
column is what the decoder runs without the op: torch's add, then accel-cuda's fused rms_norm kernel (2 launches).

Llama-3-8B shapes: hidden 4096, intermediate 14336 (x [rows, 2 * 14336] for silu_and_mul), bf16 activations and
weight; decode rows 1, 16 and 64 (batch x 1 token) and a 2k-token prefill (2048 rows).

Timing as bench/kernels_rms_norm.py: CALLS calls per CUDA graph cycling over LAYERS input sets, do_bench median of the
replays, microseconds per call (gpu_timing.graph_us): device time, as in a captured decode step. *_eager_us: CALLS
calls issued eagerly and synchronized, per call (host launch time where it bounds: a prefill is not captured).
forward_ms: the graph time saved per forward, (ref_us - fused_us) * calls per forward / 1e3. fused_GBps: bytes read
and written over fused_us. differ: the fraction of output elements that differ from the reference (silu_and_mul:
tl.exp against torch's expf; add_rms_norm: the normalized h, squares summed in another order), max_ulps the largest
difference in bf16 ulps; h_exact: add_rms_norm's h equals torch's x + residual bit for bit.

    python bench/kernels_fused_elementwise.py          # the table -> bench/results/kernels_fused_elementwise.json, .md
    python bench/kernels_fused_elementwise.py --quick  # shorter timing (5 ms warm-up, 30 ms of replays)
    python bench/kernels_fused_elementwise.py --op silu_and_mul
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable
from typing import Any

import torch
import triton
from common import environment, write_results
from gpu_timing import fused_vs_reference, graph_us

from accel.runtime.act_ops import silu_and_mul
from accel.runtime.norm_ops import add_rms_norm

HIDDEN, INTER, EPS = 4096, 14336, 1e-5
ROWS = [("decode", 1), ("decode", 16), ("decode", 64), ("prefill", 2048)]  # (phase, rows)
PER_FORWARD = {"silu_and_mul": 32, "add_rms_norm": 64}  # Llama-3-8B, 32 layers
LAYERS = 4  # input sets the timed calls cycle over
CALLS = 32


def silu_inputs(rows: int, seed: int) -> tuple[torch.Tensor]:
    """x [rows, 2 * INTER] bf16: gate_up_proj's output (gates and ups around N(0, 2))."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return ((2.0 * torch.randn(rows, 2 * INTER, generator=gen, device="cuda")).bfloat16(),)


def add_norm_inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """x [rows, HIDDEN] (a layer's output), residual (the stream, of mixed magnitudes), a weight around 1: bf16."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, HIDDEN, generator=gen, device="cuda")
    scale = torch.logspace(-1, 1, rows, device="cuda")[:, None]
    residual = torch.randn(rows, HIDDEN, generator=gen, device="cuda") * scale
    weight = 1.0 + 0.1 * torch.randn(HIDDEN, generator=gen, device="cuda")
    return x.bfloat16(), residual.bfloat16(), weight.bfloat16(), EPS


def add_then_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The decoder's path without add_rms_norm: torch's add, then accel-cuda's fused rms_norm kernel."""
    from accel_cuda.kernels.norm import rms_norm

    return rms_norm(x + residual, weight, eps)


def bf16_ulps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """bf16 values between got and want, counted across zero."""
    a, b = got.view(torch.int16).long(), want.view(torch.int16).long()
    a, b = torch.where(a < 0, -(a + 32768), a), torch.where(b < 0, -(b + 32768), b)
    return (a - b).abs()


def agreement(op: str, rows: int, kernel: Callable[..., Any]) -> dict[str, Any]:
    """differ, max_ulps (and h_exact for add_rms_norm) on one call against the reference."""
    if op == "silu_and_mul":
        args = silu_inputs(rows, seed=99)
        ulps, extra = bf16_ulps(kernel(*args), silu_and_mul(*args)), {}
    else:
        args = add_norm_inputs(rows, seed=99)
        (normed, h), (want_normed, want_h) = kernel(*args), add_rms_norm(*args)
        ulps, extra = bf16_ulps(normed, want_normed), {"h_exact": bool(torch.equal(h, want_h))}
    return {"differ": float((ulps > 0).float().mean()), "max_ulps": int(ulps.max()), **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    parser.add_argument("--op", choices=["all", *PER_FORWARD], default="all", help="time one op only")
    args = parser.parse_args()

    from accel_cuda.kernels import act, norm

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    ops = list(PER_FORWARD) if args.op == "all" else [args.op]
    rows_out = []
    for op in ops:
        for phase, rows in ROWS:
            if op == "silu_and_mul":
                sets = [silu_inputs(rows, seed=rows + i) for i in range(LAYERS)]
                reference, kernel = silu_and_mul, act.silu_and_mul
                moved = rows * 2 * INTER * 2 + rows * INTER * 2  # x read, y written (bf16)
                cfg = act.plan(INTER, 2)
                plan = f"b{cfg.block} w{cfg.num_warps}"
                unfused = None
            else:
                sets = [add_norm_inputs(rows, seed=rows + i) for i in range(LAYERS)]
                reference, kernel = add_rms_norm, norm.add_rms_norm
                moved = 4 * rows * HIDDEN * 2 + HIDDEN * 2  # x, residual read; normed, h written; the weight
                cfg = norm.plan(rows, HIDDEN)
                plan = f"bm{cfg.block_m} w{cfg.num_warps}"
                unfused = [functools.partial(add_then_rms_norm, *s) for s in sets]
            ref = [functools.partial(reference, *s) for s in sets]
            ours = [functools.partial(kernel, *s) for s in sets]
            timed = fused_vs_reference(ref, ours, CALLS, args.quick)
            row = {
                "op": op,
                "phase": phase,
                "rows": rows,
                **timed,
                "unfused_us": None if unfused is None else graph_us(unfused, CALLS, args.quick),
                "forward_ms": (timed["ref_us"] - timed["fused_us"]) * PER_FORWARD[op] / 1e3,
                "fused_GBps": moved / (timed["fused_us"] * 1e-6) / 1e9,
                **agreement(op, rows, kernel),
                "plan": plan,
            }
            rows_out.append(row)
            print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
            del sets, ref, ours, unfused
    columns = [
        "op",
        "phase",
        "rows",
        "ref_us",
        "fused_us",
        "x_graph",
        "unfused_us",
        "ref_eager_us",
        "fused_eager_us",
        "x_eager",
        "forward_ms",
        "fused_GBps",
        "differ",
        "max_ulps",
        "h_exact",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "shape": f"hidden {HIDDEN}, intermediate {INTER}, bf16 activations and weight, eps {EPS}",
        "timing": f"CUDA graph of {CALLS} calls over {LAYERS} input sets, do_bench median, per call",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "ref_us: core's reference (silu_and_mul: split, silu, mul; add_rms_norm: the add and the ~7-kernel rms_norm "
        "chain) in a CUDA graph; fused_us: accel-cuda's Triton kernel, one launch. unfused_us (add_rms_norm): torch's "
        "add, then accel-cuda's fused rms_norm kernel, the decoder's path without the op. *_eager_us: the same calls "
        f"issued eagerly (host launch time included). forward_ms: graph time saved per Llama-3-8B forward "
        f"({PER_FORWARD['silu_and_mul']} silu_and_mul, {PER_FORWARD['add_rms_norm']} add_rms_norm) against ref_us. "
        "fused_GBps: bytes read and written over fused_us. differ / max_ulps: output elements that differ from the "
        "reference, and by how many bf16 ulps at most (add_rms_norm: the normalized h); h_exact: h is torch's sum."
    )
    write_results(
        "kernels_fused_elementwise",
        f"silu_and_mul and add_rms_norm (Llama-3-8B shapes) on {props.name}: reference torch chains vs fused kernels, "
        "microseconds",
        columns,
        rows_out,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
