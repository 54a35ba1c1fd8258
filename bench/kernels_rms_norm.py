"""RMSNorm on one GPU: core's reference torch chain vs accel-cuda's fused Triton kernel.

The reference (norm_ops.rms_norm: fp32 cast, pow, mean, add eps, rsqrt, mul, cast back, times the weight) runs ~7
small kernels per call; the fused kernel one launch. A Llama-3-8B forward normalizes 65 times (2 per layer and the
final norm).

Llama-3-8B shapes: hidden 4096, bf16 activations and weight; decode rows 1, 16 and 64 (batch x 1 token) and a
2k-token prefill (2048 rows).

Timing: CALLS norms per CUDA graph cycling over LAYERS (activation, weight) pairs, do_bench median of the replays,
microseconds per norm (gpu_timing.graph_us): device time, as in a captured decode step. eager_us: CALLS norms
issued eagerly and synchronized, per norm, i.e. host launch time where it bounds (a prefill is not captured).
forward_ms: the graph time saved per forward of the 65 norms, (ref_us - fused_us) * 65 / 1e3. differ: the fraction
of output elements that differ from the reference (the kernel sums the squares in another order: a rare bf16
element one ulp away), max_ulps the largest such difference.

    python bench/kernels_rms_norm.py            # the table -> bench/results/kernels_rms_norm.json / .md
    python bench/kernels_rms_norm.py --quick    # shorter timing (5 ms warm-up, 30 ms of replays)
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

from accel.runtime.norm_ops import rms_norm

HIDDEN, EPS = 4096, 1e-5
CASES = [("decode", 1), ("decode", 16), ("decode", 64), ("prefill", 2048)]  # (phase, rows)
NORMS_PER_FORWARD = 65  # Llama-3-8B: 2 per layer x 32 layers + the final norm
LAYERS = 4  # (activation, weight) pairs the timed calls cycle over
CALLS = 32


def make_inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x [rows, HIDDEN] bf16 (a residual stream of mixed magnitudes) and a bf16 weight around 1."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, HIDDEN, generator=gen, device="cuda") * torch.logspace(-1, 1, rows, device="cuda")[:, None]
    weight = 1.0 + 0.1 * torch.randn(HIDDEN, generator=gen, device="cuda")
    return x.bfloat16(), weight.bfloat16()


def agreement(rows: int, kernel: Callable[..., torch.Tensor]) -> tuple[float, int]:
    """(fraction of elements differing from the reference, the largest difference in bf16 ulps) on one call."""
    x, weight = make_inputs(rows, seed=99)
    got, want = kernel(x, weight, EPS), rms_norm(x, weight, EPS)
    ulps = (got.view(torch.int16).long() - want.view(torch.int16).long()).abs()
    return float((ulps > 0).float().mean()), int(ulps.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()

    from accel_cuda.kernels.norm import plan
    from accel_cuda.kernels.norm import rms_norm as kernel

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    rows_out = []
    for phase, rows in CASES:
        pairs = [make_inputs(rows, seed=rows + i) for i in range(LAYERS)]
        ref = [functools.partial(rms_norm, x, w, EPS) for x, w in pairs]
        ours = [functools.partial(kernel, x, w, EPS) for x, w in pairs]
        timed = fused_vs_reference(ref, ours, CALLS, args.quick)
        moved = 2 * rows * HIDDEN * 2 + HIDDEN * 2  # bf16 x read and out written, the weight read
        differ, max_ulps = agreement(rows, kernel)
        cfg = plan(rows, HIDDEN)
        row = {
            "phase": phase,
            "rows": rows,
            **timed,
            "forward_ms": (timed["ref_us"] - timed["fused_us"]) * NORMS_PER_FORWARD / 1e3,
            "fused_GBps": moved / (timed["fused_us"] * 1e-6) / 1e9,
            "differ": differ,
            "max_ulps": max_ulps,
            "plan": f"bm{cfg.block_m} w{cfg.num_warps}",
        }
        rows_out.append(row)
        print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
        del pairs, ref, ours
    columns = [
        "phase",
        "rows",
        "ref_us",
        "fused_us",
        "x_graph",
        "ref_eager_us",
        "fused_eager_us",
        "x_eager",
        "forward_ms",
        "fused_GBps",
        "differ",
        "max_ulps",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "shape": f"hidden {HIDDEN}, bf16 activations and weight, eps {EPS}",
        "timing": f"CUDA graph of {CALLS} norms over {LAYERS} (activation, weight) pairs, do_bench median, per norm",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "ref_us: core's reference rms_norm (the ~7-kernel torch chain) in a CUDA graph; fused_us: accel-cuda's Triton "
        "kernel, one launch. *_eager_us: the same norms issued eagerly (host launch time included). forward_ms: "
        f"graph time saved per forward of {NORMS_PER_FORWARD} norms (Llama-3-8B). fused_GBps: x read, output "
        "written and the weight read, over fused_us. differ / max_ulps: output elements that differ from the "
        "reference, and by how many bf16 ulps at most."
    )
    write_results(
        "kernels_rms_norm",
        f"RMSNorm (hidden {HIDDEN}) on {props.name}: reference torch chain vs fused kernel, microseconds",
        columns,
        rows_out,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
