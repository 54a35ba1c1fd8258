"""W8A8 linear on one GPU: bf16 cuBLAS vs accel-cuda's int8 and fp8 e4m3 W8A8 (activation quantization included).

Llama-3-8B MLP shapes with random weights (N x K = out x in): 14336 x 4096 (up/gate) and 4096 x 14336 (down),
per-channel weight scales, dynamic per-token activation scales, bf16 activations, M (tokens) 1 to 2048.

Timing as bench/kernels_w4a16.py: each method's calls in one CUDA graph, CALLS calls cycling over SETS weight copies
(more bytes than L2 holds), do_bench median of replays (L2 flushed before each), microseconds per call. Columns per
path: int8 "triton" (tl.dot GEMM with fused epilogue) and "cublas" (torch._int_mm + epilogue kernel, M > 16);
fp8 "triton", "scaled_mm" (rowwise scales, CUTLASS) and "cublas" (tensorwise _scaled_mm to fp32 + epilogue);
int8_us / fp8_us are what the op's plan picks. Speed-ups are over bf16 torch.nn.functional.linear, same card, same
run.

    python bench/kernels_w8a8.py               # the table -> bench/results/kernels_w8a8.json / .md
    python bench/kernels_w8a8.py --sweep F     # first time int8 Triton launch variants at M=1, 16 (JSON to F)
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable

import torch
import triton
from common import environment, write_results
from gpu_timing import graph_us as _graph_us
from gpu_timing import rel_err

from accel.quantization.weight_quant import WeightQuantArgs, quantize

SHAPES = [("up/gate", 14336, 4096), ("down", 4096, 14336)]
MS = [1, 16, 64, 256, 2048]
SETS = 3  # weight copies per method: 3 x 59 MB of int8 is past the 50-60 MB L2
CALLS = 6


def graph_us(calls: list[Callable[[], object]], quick: bool = False) -> float:
    """Microseconds per call over CALLS calls in a graph (gpu_timing.graph_us)."""
    return _graph_us(calls, CALLS, quick)


def make_weights(n: int, k: int, seed: int):
    """(bf16 weight, int8 codes, int8 scales [N, 1], e4m3 codes, fp8 scales [N, 1]), per-channel."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    weight = torch.randn(n, k, generator=gen, device="cuda") * 0.02
    q8 = quantize(weight, WeightQuantArgs(num_bits=8, strategy="channel"))
    f8 = quantize(weight, WeightQuantArgs(num_bits=8, strategy="channel", type="float"))
    return weight.to(torch.bfloat16), q8.q, q8.scale, f8.q, f8.scale


def paths(m: int, n: int, k: int):
    """(column, fp8, config) for every path that takes this shape."""
    from accel_cuda.kernels.w8a8 import W8Config, plan

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    tri = (
        plan(min(m, 64), n, k, False, sms)
        if m <= 64
        else W8Config(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=4)
    )
    out = [("int8_triton", False, tri), ("fp8_triton", True, tri)]
    if m > 16:
        out.append(("int8_cublas", False, W8Config("cublas")))
    out += [("fp8_scaled_mm", True, W8Config("scaled_mm")), ("fp8_cublas", True, W8Config("cublas"))]
    return out


def _plan_of(x: torch.Tensor, m: int, n: int, k: int, fp8: bool, sms: int):
    """The launch the op picks for this call: the Hopper TMA kernel where it applies, else w8a8.plan."""
    from accel_cuda.kernels.w8a8 import _tma_config, plan

    return _tma_config(m, n, k, fp8, x) or plan(m, n, k, fp8, sms, True, True)


def sweep_configs(m: int):
    from accel_cuda.kernels.w8a8 import W8Config

    bm = 16 if m <= 16 else 64
    out = []
    for bn, bk, stages in ((32, 256, 4), (64, 256, 4), (64, 128, 5), (128, 128, 4), (64, 512, 3)):
        for split in (1, 2, 4, 8):
            out.append(W8Config(block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=4, num_stages=stages))
    return out


def run_sweep(path: str) -> None:
    from accel_cuda.kernels.w8a8 import fp8_linear, w8a8_int8_linear

    results: list[dict[str, object]] = []
    for name, n, k in SHAPES:
        sets = [make_weights(n, k, seed=40 + i) for i in range(SETS)]
        for m in (1, 16):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            for fp8 in (False,):
                timings = []
                for cfg in sweep_configs(m):
                    fn = fp8_linear if fp8 else w8a8_int8_linear
                    calls = [
                        functools.partial(fn, x, s[3] if fp8 else s[1], s[4] if fp8 else s[2], config=cfg) for s in sets
                    ]
                    try:
                        timings.append((graph_us(calls, quick=True), cfg.__dict__))
                    except Exception as exc:
                        print(f"  {name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                timings.sort(key=lambda t: t[0])
                results.append({"shape": name, "m": m, "fp8": fp8, "timings": timings})
                print(
                    f"sweep {name} M={m} {'fp8' if fp8 else 'int8'}: "
                    + " | ".join(
                        f"{us:.1f}us bn{c['block_n']} bk{c['block_k']} s{c['split']} st{c['num_stages']}"
                        for us, c in timings[:3]
                    ),
                    flush=True,
                )
        del sets
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", metavar="JSON", help="first time Triton launch variants at decode sizes")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    args = parser.parse_args()

    from accel_cuda.kernels.w8a8 import fp8_linear, w8a8_int8_linear

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    if args.sweep:
        run_sweep(args.sweep)
    if args.no_table:
        return
    started = time.perf_counter()
    rows = []
    for name, n, k in SHAPES:
        sets = [make_weights(n, k, seed=20 + i) for i in range(SETS)]
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x.float(), sets[0][0].float())
            row: dict[str, object] = {"shape": f"{n}x{k} {name}", "M": m}
            row["bf16_us"] = graph_us([functools.partial(torch.nn.functional.linear, x, s[0]) for s in sets])
            for column, fp8, cfg in [("int8", False, None), ("fp8", True, None), *paths(m, n, k)]:
                fn = fp8_linear if fp8 else w8a8_int8_linear
                calls = [
                    functools.partial(fn, x, s[3] if fp8 else s[1], s[4] if fp8 else s[2], config=cfg) for s in sets
                ]
                try:
                    row[f"{column}_err"] = rel_err(calls[0](), ref)
                    row[f"{column}_us"] = graph_us(calls)
                except Exception as exc:  # a library path this card or torch lacks is reported, not fatal
                    row[f"{column}_us"] = None
                    print(f"{name} M={m} {column}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            row["x_int8"] = row["bf16_us"] / row["int8_us"]
            row["x_fp8"] = row["bf16_us"] / row["fp8_us"]
            p8, pf = (_plan_of(x, m, n, k, fp8, props.multi_processor_count) for fp8 in (False, True))
            row["plan"] = f"int8 {p8.kernel} s{p8.split} / fp8 {pf.kernel} s{pf.split}"
            rows.append(row)
            print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
        del sets
    columns = [
        "shape",
        "M",
        "bf16_us",
        "int8_us",
        "fp8_us",
        "x_int8",
        "x_fp8",
        "int8_triton_us",
        "int8_cublas_us",
        "fp8_triton_us",
        "fp8_scaled_mm_us",
        "fp8_cublas_us",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "weights": "random, per-channel scales; activations bf16, dynamic per-token scales",
        "timing": f"CUDA graph of {CALLS} calls over {SETS} weight copies, do_bench median of replays, per call",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "N x K is out x in. Every W8A8 time includes the activation quantization kernel. int8_us / fp8_us: the "
        "path the op's plan picks (plan column); the other columns time each path by hand. x_int8 / x_fp8: bf16 "
        "time over ours. Errors (JSON) are relative to the fp32 product with the unquantized weights, so they "
        "include the quantization error itself (about 1e-2 for int8 and 3e-2 for fp8 on random data)."
    )
    write_results(
        "kernels_w8a8",
        f"W8A8 linear on {props.name}: microseconds per call and speed-up over bf16",
        columns,
        rows,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
