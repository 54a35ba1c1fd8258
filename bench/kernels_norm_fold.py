"""RMSNorm (and SwiGLU) folded into the W4A16 decode GEMVs around it, against the unfused launches, at batch 1.

Each case is a (producer, consumer) pair of Llama-3-8B linears with a norm between them, as a decode step runs them:
o -> post-attention norm -> gate/up, down -> next input norm -> q/k/v, and the last down -> final norm -> an int4
lm_head. Unfused: w4a16_linear (producer), add_rms_norm (the residual add and the norm: one launch), w4a16_linear
(consumer). Folded: w4a16_linear_residual (the add and the norm's weight in the producer's epilogue), then
w4a16_linear_rms (the norm's scale in the consumer). The gate/up case also with SwiGLU after it: silu_and_mul's launch
unfused, w4a16_linear_silu_mul (SwiGLU in the gate/up GEMV's epilogue) folded. Random symmetric int4 weights, group
128, bf16.

Timing: CALLS chains per CUDA graph cycling over LAYERS weight sets (so no weight stays in L2), do_bench median, us
per chain (gpu_timing.graph_us); the pieces alone the same way. err_*: relative error of the consumer's output against
float64 (the unfused chain computed in float64 from the same bf16 inputs).

    python bench/kernels_norm_fold.py [--quick]     # -> bench/results/kernels_norm_fold.json / .md
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import triton
from common import environment, write_results
from gpu_timing import graph_us

from accel.runtime.ops import w4a16_weight
from accel.runtime.packing import pack_int32

CASES = [  # (name, producer N x K, consumer N x K, SwiGLU after the consumer)
    ("o -> gate/up", (4096, 4096), (28672, 4096), False),
    ("o -> gate/up -> SwiGLU", (4096, 4096), (28672, 4096), True),
    ("down -> q/k/v", (4096, 14336), (6144, 4096), False),
    ("down -> lm_head", (4096, 14336), (128256, 4096), False),
]
EPS = 1e-5
LAYERS = 4
CALLS = 16


def int4_weights(n: int, k: int, gen: torch.Generator) -> tuple[tuple, dict, torch.Tensor]:
    """(prepared weight arguments, their keyword arguments, the artifact's (packed, scale) for float64 checks)."""
    from accel_cuda.kernels import w4a16_prepare

    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).bfloat16()
    packed = pack_int32(q, 4)
    args, kwargs = w4a16_prepare(packed, scale, None, 128)
    return args, kwargs, (packed, scale)


# (producer weights, kwargs, raw; consumer weights, kwargs, raw; x, residual, norm weight; consumer x, h's sums)
Set = tuple


def unfused(s: Set, silu: bool) -> torch.Tensor:
    from accel_cuda.kernels import add_rms_norm, silu_and_mul, w4a16_linear

    prod, prod_kw, _, cons, cons_kw, _, x, residual, weight, _, _ = s
    normed, _ = add_rms_norm(w4a16_linear(x, *prod, **prod_kw), residual, weight, EPS)
    y = w4a16_linear(normed, *cons, **cons_kw)
    return silu_and_mul(y) if silu else y


def folded(s: Set, silu: bool) -> torch.Tensor:
    from accel_cuda.kernels import w4a16_linear_residual, w4a16_linear_rms, w4a16_linear_silu_mul

    prod, prod_kw, _, cons, cons_kw, _, x, residual, weight, _, _ = s
    _, hw, ss = w4a16_linear_residual(x, *prod, residual, weight, **prod_kw)
    if silu:
        return w4a16_linear_silu_mul(hw, *cons, ss, EPS, **cons_kw)
    return w4a16_linear_rms(hw, *cons, ss, EPS, **cons_kw)


def producer(s: Set, fold: bool) -> object:
    from accel_cuda.kernels import w4a16_linear, w4a16_linear_residual

    prod, prod_kw, _, _, _, _, x, residual, weight, _, _ = s
    if fold:
        return w4a16_linear_residual(x, *prod, residual, weight, **prod_kw)
    return w4a16_linear(x, *prod, **prod_kw)


def consumer(s: Set, fold: bool, silu: bool) -> torch.Tensor:
    from accel_cuda.kernels import silu_and_mul, w4a16_linear, w4a16_linear_rms, w4a16_linear_silu_mul

    _, _, _, cons, cons_kw, _, _, _, _, xc, ss = s
    if silu:
        if fold:
            return w4a16_linear_silu_mul(xc, *cons, ss, EPS, **cons_kw)
        return silu_and_mul(w4a16_linear(xc, *cons, **cons_kw))
    return w4a16_linear_rms(xc, *cons, ss, EPS, **cons_kw) if fold else w4a16_linear(xc, *cons, **cons_kw)


def measure(name: str, producer_shape: tuple[int, int], consumer_shape: tuple[int, int], silu: bool,
            gen: torch.Generator, quick: bool) -> dict[str, object]:
    """One row of the table: the chain unfused and folded, the pieces alone, errors against float64."""
    from accel_cuda.kernels.norm_fold import fold_plan

    (pn, pk), (cn, ck) = producer_shape, consumer_shape
    sets = []
    for _ in range(LAYERS):
        prod, prod_kw, prod_raw = int4_weights(pn, pk, gen)
        cons, cons_kw, cons_raw = int4_weights(cn, ck, gen)
        x = torch.randn(1, pk, generator=gen, device="cuda").bfloat16()
        residual = (torch.randn(1, pn, generator=gen, device="cuda") * 3).bfloat16()
        weight = (1.0 + 0.5 * torch.randn(pn, generator=gen, device="cuda")).bfloat16()
        xc = torch.randn(1, ck, generator=gen, device="cuda").bfloat16()  # the consumer's input, timed alone
        ss = xc.float().pow(2).reshape(1, pn // 16, -1).sum(-1)  # and h's partial sums, as 16-row programs leave them
        sets.append((prod, prod_kw, prod_raw, cons, cons_kw, cons_raw, x, residual, weight, xc, ss))

    def timed(fn) -> float:
        return graph_us([functools.partial(fn, s) for s in sets], CALLS, quick)

    s0 = sets[0]
    prod_raw, cons_raw, x, residual, weight = s0[2], s0[5], s0[6], s0[7], s0[8]
    h64 = x.double() @ w4a16_weight(pk, *prod_raw, None, 128).double().T + residual.double()
    normed = h64 * torch.rsqrt(h64.pow(2).mean(-1, keepdim=True) + EPS) * weight.double()
    want = normed @ w4a16_weight(ck, *cons_raw, None, 128).double().T
    if silu:
        gate, up = want.split(cn // 2, -1)
        want = gate * torch.sigmoid(gate) * up
    planned = (fold_plan(x, *s0[0], permuted=True), fold_plan(s0[9], *s0[3], permuted=True))
    row: dict[str, object] = {
        "case": name,
        "unfused_us": timed(functools.partial(unfused, silu=silu)),
        "folded_us": timed(functools.partial(folded, silu=silu)),
        "producer_us": timed(functools.partial(producer, fold=False)),
        "producer_residual_us": timed(functools.partial(producer, fold=True)),
        "consumer_us": timed(functools.partial(consumer, fold=False, silu=silu)),
        "consumer_rms_us": timed(functools.partial(consumer, fold=True, silu=silu)),
        "err_unfused": float((unfused(s0, silu).double() - want).norm() / want.norm()),
        "err_folded": float((folded(s0, silu).double() - want).norm() / want.norm()),
        "plans": " / ".join("fallback" if p is None else f"bn{p.block_n} ng{p.ng} split{p.split} s{p.stages}"
                            for p in planned),
    }
    row["saved_us"] = float(row["unfused_us"]) - float(row["folded_us"])  # type: ignore[arg-type]
    row["speedup"] = float(row["unfused_us"]) / float(row["folded_us"])  # type: ignore[arg-type]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    rows = []
    for name, producer_shape, consumer_shape, silu in CASES:
        row = measure(name, producer_shape, consumer_shape, silu, gen, args.quick)
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
        torch.cuda.empty_cache()
    columns = ["case", "unfused_us", "folded_us", "saved_us", "speedup", "producer_us", "producer_residual_us",
               "consumer_us", "consumer_rms_us", "err_unfused", "err_folded", "plans"]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "timing": f"CUDA graph of {CALLS} chains over {LAYERS} weight sets, do_bench median, per chain",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "unfused: w4a16_linear, add_rms_norm, w4a16_linear (+ silu_and_mul); folded: w4a16_linear_residual then "
        "w4a16_linear_rms (w4a16_linear_silu_mul with SwiGLU; accel.runtime.norm_fold_ops). producer / consumer: "
        "each linear alone, plain (+ silu_and_mul) and with its fold (consumer_rms_us: with SwiGLU too). speedup: "
        "unfused / folded. err: the consumer's output against the float64 chain. plans: the TMA GEMV launches the "
        "folds run (producer / consumer), fallback where none is planned. A decode step has 32 o -> gate/up and 31 "
        "down -> q/k/v pairs, and one down -> lm_head where lm_head is int4."
    )
    write_results("kernels_norm_fold", f"RMSNorm folded into the W4A16 decode GEMVs on {props.name}, us per chain",
                  columns, rows, meta, notes)


if __name__ == "__main__":
    main()
