"""W8A8 activation quantization fused into RMSNorm / add + RMSNorm / SwiGLU vs the unfused kernel pair, one GPU.

accel-cuda's fused kernels against the pair the decoder runs without them: the norm / silu_and_mul kernel, then
w8a8.quantize_rows.

A W8A8 decode step of Llama-3-8B quantizes each linear's input in a separate launch (quantize_rows, ~3 us, 128 per
step). The fused ops quantize where the activation is produced: rms_norm_quant before the first layer's qkv (1 per
forward), add_rms_norm_quant before every other qkv and every gate/up (63), silu_and_mul_quant before down (32); the
GEMM then takes the codes (w8a8_scaled_mm, the linear ops' own GEMM). unfused_us: the norm or SwiGLU kernel (its
output written) then quantize_rows (read back, quantized): 2 launches; fused_us: one launch writing the codes and
scales (and h). The GEMM is the same either way and not timed here.

Llama-3-8B shapes: hidden 4096, intermediate 14336 (x [rows, 2 * 14336] for silu_and_mul_quant), bf16 activations and
weight, int8 and / or e4m3 codes; decode rows 1, 16 and 64 (batch x 1 token) and a 2k-token prefill (2048 rows).

Timing as bench/kernels_fused_elementwise.py: CALLS calls per CUDA graph cycling over LAYERS input sets, do_bench
median of the replays, microseconds per call (gpu_timing.graph_us): device time, as in a captured decode step.
*_eager_us: CALLS calls issued eagerly and synchronized, per call (host launch time where it bounds). forward_ms: the
graph time saved per forward, (unfused_us - fused_us) * calls per forward / 1e3. fused_GBps: bytes read and written
over fused_us. exact: the fused codes and scales equal the unfused pair's bit for bit (and h torch's sum); differ /
max_steps: codes that differ from torch's reference (quantize_activation of norm_ops / act_ops), and by how many
codes at most (e4m3: neighbouring values), from the unfused kernels' own caveat (a rare element of y one ulp away).

    python bench/kernels_fused_quant.py                 # the table -> bench/results/kernels_fused_quant.json, .md
    python bench/kernels_fused_quant.py --quick         # shorter timing (5 ms warm-up, 30 ms of replays)
    python bench/kernels_fused_quant.py --op silu_and_mul_quant --codes fp8
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
from gpu_timing import fused_vs_reference

from accel.runtime.fused_quant_ops import add_rms_norm_quant, rms_norm_quant, silu_and_mul_quant

HIDDEN, INTER, EPS = 4096, 14336, 1e-5
ROWS = [("decode", 1), ("decode", 16), ("decode", 64), ("prefill", 2048)]  # (phase, rows)
PER_FORWARD = {"rms_norm_quant": 1, "add_rms_norm_quant": 63, "silu_and_mul_quant": 32}  # Llama-3-8B, 32 layers
REFERENCE = {"rms_norm_quant": rms_norm_quant, "add_rms_norm_quant": add_rms_norm_quant,
             "silu_and_mul_quant": silu_and_mul_quant}
LAYERS = 4  # input sets the timed calls cycle over
CALLS = 32


def norm_inputs(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [rows, HIDDEN] (a layer's output), residual (the stream, of mixed magnitudes), a weight around 1: bf16."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(rows, HIDDEN, generator=gen, device="cuda")
    scale = torch.logspace(-1, 1, rows, device="cuda")[:, None]
    residual = torch.randn(rows, HIDDEN, generator=gen, device="cuda") * scale
    weight = 1.0 + 0.1 * torch.randn(HIDDEN, generator=gen, device="cuda")
    return x.bfloat16(), residual.bfloat16(), weight.bfloat16()


def silu_inputs(rows: int, seed: int) -> torch.Tensor:
    """x [rows, 2 * INTER] bf16: gate_up_proj's output (gates and ups around N(0, 2))."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    return (2.0 * torch.randn(rows, 2 * INTER, generator=gen, device="cuda")).bfloat16()


def op_args(op: str, rows: int, seed: int, fp8: bool) -> tuple[Any, ...]:
    """The op's arguments (x, [residual, weight, eps,] fp8)."""
    if op == "silu_and_mul_quant":
        return (silu_inputs(rows, seed), fp8)
    x, residual, weight = norm_inputs(rows, seed)
    return (x, weight, EPS, fp8) if op == "rms_norm_quant" else (x, residual, weight, EPS, fp8)


def kernels(op: str) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(fused, unfused): accel-cuda's fused kernel, and its kernel pair (the norm / SwiGLU kernel, quantize_rows)."""
    from accel_cuda.kernels import act, norm, w8a8

    def quantized(y: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
        codes, scale = w8a8.quantize_rows(y.reshape(-1, y.shape[-1]), fp8)
        return codes.reshape(y.shape), scale.reshape(*y.shape[:-1], 1)

    if op == "rms_norm_quant":
        return norm.rms_norm_quant, lambda x, w, eps, fp8: quantized(norm.rms_norm(x, w, eps), fp8)
    if op == "add_rms_norm_quant":

        def unfused_add(x, residual, w, eps, fp8):  # type: ignore[no-untyped-def]
            normed, h = norm.add_rms_norm(x, residual, w, eps)
            return (*quantized(normed, fp8), h)

        return norm.add_rms_norm_quant, unfused_add
    return act.silu_and_mul_quant, lambda x, fp8: quantized(act.silu_and_mul(x), fp8)


def code_steps(codes: torch.Tensor) -> torch.Tensor:
    """Codes on their grid (e4m3: sign times magnitude bits), so neighbouring codes are 1 apart."""
    if codes.dtype == torch.float8_e4m3fn:
        bits = codes.view(torch.uint8).int()
        return torch.where(bits >= 0x80, -(bits & 0x7F), bits)
    return codes.int()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype.itemsize == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def agreement(op: str, rows: int, fp8: bool) -> dict[str, Any]:
    """exact (fused == unfused kernels), differ and max_steps (fused codes against torch's reference), one call."""
    fused, unfused = kernels(op)
    args = op_args(op, rows, seed=99, fp8=fp8)
    got, pair, want = fused(*args), unfused(*args), REFERENCE[op](*args)
    steps = (code_steps(got[0]) - code_steps(want[0])).abs()
    return {
        "exact": all(same(a, b) for a, b in zip(got, pair, strict=True)),
        "differ": float((steps > 0).float().mean()),
        "max_steps": int(steps.max()),
    }


def moved_bytes(op: str, rows: int) -> int:
    """Bytes the fused kernel reads and writes: bf16 inputs, 1-byte codes, fp32 scales (and bf16 h)."""
    if op == "silu_and_mul_quant":
        return rows * 2 * INTER * 2 + rows * INTER + rows * 4
    moved = rows * HIDDEN * 2 + HIDDEN * 2 + rows * HIDDEN + rows * 4  # x, weight read; codes, scales written
    return moved + (2 * rows * HIDDEN * 2 if op == "add_rms_norm_quant" else 0)  # residual read, h written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    parser.add_argument("--op", choices=["all", *PER_FORWARD], default="all", help="time one op only")
    parser.add_argument("--codes", choices=["both", "fp8", "int8"], default="both", help="activation code type")
    args = parser.parse_args()

    from accel_cuda.kernels import act, norm

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    ops = list(PER_FORWARD) if args.op == "all" else [args.op]
    codes = {"both": [True, False], "fp8": [True], "int8": [False]}[args.codes]
    rows_out = []
    for op in ops:
        fused, unfused = kernels(op)
        for fp8 in codes:
            for phase, rows in ROWS:
                sets = [op_args(op, rows, seed=rows + i, fp8=fp8) for i in range(LAYERS)]
                timed = fused_vs_reference(
                    [functools.partial(unfused, *s) for s in sets],
                    [functools.partial(fused, *s) for s in sets],
                    CALLS,
                    args.quick,
                )
                if op == "silu_and_mul_quant":
                    cfg = act.quant_plan(INTER)
                    plan = f"b{cfg.block} w{cfg.num_warps}" if cfg else "unfused pair"
                else:
                    cfg = norm.plan(rows, HIDDEN)
                    plan = f"bm{cfg.block_m} w{cfg.num_warps}"
                row = {
                    "op": op,
                    "codes": "fp8" if fp8 else "int8",
                    "phase": phase,
                    "rows": rows,
                    "unfused_us": timed["ref_us"],
                    "fused_us": timed["fused_us"],
                    "x_graph": timed["x_graph"],
                    "unfused_eager_us": timed["ref_eager_us"],
                    "fused_eager_us": timed["fused_eager_us"],
                    "x_eager": timed["x_eager"],
                    "forward_ms": (timed["ref_us"] - timed["fused_us"]) * PER_FORWARD[op] / 1e3,
                    "fused_GBps": moved_bytes(op, rows) / (timed["fused_us"] * 1e-6) / 1e9,
                    **agreement(op, rows, fp8),
                    "plan": plan,
                }
                rows_out.append(row)
                print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
                del sets
    columns = [
        "op",
        "codes",
        "phase",
        "rows",
        "unfused_us",
        "fused_us",
        "x_graph",
        "unfused_eager_us",
        "fused_eager_us",
        "x_eager",
        "forward_ms",
        "fused_GBps",
        "exact",
        "differ",
        "max_steps",
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
        "unfused_us: accel-cuda's norm / add_rms_norm / silu_and_mul kernel, then w8a8.quantize_rows (2 launches, the "
        "activation written and read back) in a CUDA graph; fused_us: the fused kernel, one launch writing codes and "
        "scales (and h). *_eager_us: the same calls issued eagerly (host launch time included). forward_ms: graph "
        f"time saved per Llama-3-8B W8A8 forward ({PER_FORWARD['rms_norm_quant']} rms_norm_quant, "
        f"{PER_FORWARD['add_rms_norm_quant']} add_rms_norm_quant, {PER_FORWARD['silu_and_mul_quant']} "
        "silu_and_mul_quant). fused_GBps: bytes read and written over fused_us. exact: codes and scales (and h) equal "
        "the unfused kernels' bit for bit; differ / max_steps: codes that differ from torch's reference, and by how "
        "many codes at most."
    )
    write_results(
        "kernels_fused_quant",
        f"W8A8 activation quantization fused into RMSNorm / SwiGLU (Llama-3-8B shapes) on {props.name}: unfused "
        "kernel pair vs fused kernel, microseconds",
        columns,
        rows_out,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
