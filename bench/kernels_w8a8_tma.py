"""W8A8 at decode sizes on Hopper: the TMA 8-bit wgmma kernel (w8a8_tma.py) vs bf16 cuBLAS and the previous plan.

Llama-3-8B linears with random weights (per-channel scales, dynamic per-token bf16 activations): the MLP shapes
14336 x 4096 (up/gate) and 4096 x 14336 (down), and a fused decode step's q/k/v (6144 x 4096), o (4096 x 4096) and
gate+up (28672 x 4096). For each shape, M and format (int8, fp8 e4m3) a small launch sweep (weight tile 64 / 128,
pipeline depth, split-K to about 1 or 2 programs per SM); the best correct launch is the kernel's time, and with
--write-table goes into w8a8_tma_configs.json for this card. Every time includes the activation quantization
kernel. Timing as bench/kernels_w8a8.py (CUDA graph over weight copies past L2, do_bench median).

    python bench/kernels_w8a8_tma.py [--write-table] [--ms 1,4,16,32,64] [--wide] [--fmts fp8] [--only o,down]
    python bench/kernels_w8a8_tma.py --table-from bench/results/kernels_w8a8_tma.json   # table only, no GPU
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from pathlib import Path

import torch
import triton
from common import environment, write_results
from gpu_timing import copy_bandwidth, rel_err
from kernels_tma import DECODE_SHAPES
from kernels_w8a8 import SETS, SHAPES, graph_us, make_weights

MS = [1, 4, 16, 32, 64]


SMEM = 227 * 1024  # Hopper's shared memory per block


def candidates(m: int, n: int, k: int, sms: int, wide: bool = False) -> list:
    """Launches for this M: token tile the next power of two >= M, weight tiles 64 / 128, two pipeline depths,
    split-K to about 1 or 2 programs per SM. `wide` adds weight tiles of 256, 4 and 8 warps, one or two K boxes
    per loop iteration (ku), a third depth and 3-4 programs per SM (session 15)."""
    from accel_cuda.kernels.w8a8_tma import BK, W8TmaConfig, supports_w8a8_tma

    bm = max(16, 1 << max(0, (m - 1).bit_length()))
    out = []
    for bn in (64, 128, 256) if wide else (64, 128):
        for warps in ((4, 8) if wide else (4 if bm <= 32 else 8,)):
            for ku in (1, 2) if wide else (1,):
                depths = (4, 6) if bm <= 32 else (3, 4)
                for stages in (*depths, 8 if bm <= 32 else 5) if wide else depths:
                    if (bn + bm) * BK * ku * stages > SMEM:
                        continue
                    steps, tiles = k // BK, (n // bn) * -(-m // bm)
                    for per_sm in (1, 2, 3, 4) if wide else (1, 2):
                        want = max(1, min(steps // ku, -(-per_sm * sms // tiles)))
                        split = next(s for s in range(want, 0, -1) if steps % (s * ku) == 0)
                        cfg = W8TmaConfig(bn, bm, split, stages, warps, ku)
                        if supports_w8a8_tma(n, k, cfg):
                            out.append(cfg)
    return list(dict.fromkeys(out))


def _as_w8(cfg):
    from accel_cuda.kernels.w8a8 import W8Config

    return W8Config("tma", block_m=cfg.block_m, block_n=cfg.block_n, block_k=128 * cfg.ku, split=cfg.split,
                    num_warps=cfg.num_warps, num_stages=cfg.stages)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--write-table", action="store_true")
    parser.add_argument("--table-from", default="", help="write the tuned table from a stored results JSON (no GPU)")
    parser.add_argument("--wide", action="store_true", help="the wider launch sweep (candidates' docstring)")
    parser.add_argument("--fmts", default="int8,fp8", help="which 8-bit formats to run")
    parser.add_argument("--only", default="", help="comma-separated shape names to run (default: all)")
    parser.add_argument("--out-name", default="kernels_w8a8_tma", help="results file stem")
    args = parser.parse_args()
    if args.table_from:
        data = json.loads(Path(args.table_from).read_text())
        write_table(data["meta"]["device"], data["meta"]["sweep"])
        return
    from accel_cuda.kernels.w8a8 import W8Config, fp8_linear, plan, w8a8_int8_linear
    from accel_cuda.kernels.w8a8_tma import W8TmaConfig

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    ms = [int(v) for v in args.ms.split(",")]
    bandwidth = copy_bandwidth()
    started = time.perf_counter()
    rows, sweeps = [], []
    for name, n, k in [*SHAPES, *DECODE_SHAPES]:
        if args.only and name not in args.only.split(","):
            continue
        sets = [make_weights(n, k, seed=60 + i) for i in range(SETS)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x.float(), sets[0][0].float())
            row: dict[str, object] = {"shape": f"{n}x{k} {name}", "M": m}
            row["bf16_us"] = graph_us([functools.partial(torch.nn.functional.linear, x, s[0]) for s in sets])
            row["floor_us"] = (n * k + 2 * m * (k + n)) / (bandwidth * 1e6)
            for fmt, fp8 in [(f, f == "fp8") for f in ("int8", "fp8") if f in args.fmts.split(",")]:
                fn = fp8_linear if fp8 else w8a8_int8_linear

                def calls_for(cfg: W8Config | None, fp8: bool = fp8, fn=fn, x=x, sets=sets) -> list:
                    return [functools.partial(fn, x, s[3] if fp8 else s[1], s[4] if fp8 else s[2], config=cfg)
                            for s in sets]

                prev = plan(m, n, k, fp8, sms, True, True)
                row[f"{fmt}_prev_us"] = graph_us(calls_for(prev))
                timings = []
                for cfg in candidates(m, n, k, sms, args.wide):
                    try:
                        calls = calls_for(_as_w8(cfg))
                        err = rel_err(calls[0](), ref)
                        timings.append({"cfg": cfg.__dict__, "us": graph_us(calls, quick=True), "err": err})
                    except Exception as exc:  # a launch that fails to compile or run is reported, not fatal
                        print(f"  {name} M={m} {fmt} {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                timings.sort(key=lambda t: t["us"])
                sweeps.append({"shape": name, "n": n, "k": k, "m": m, "fmt": fmt, "timings": timings})
                ok = [t for t in timings if t["err"] < 5e-2]
                if ok:
                    best = W8TmaConfig(**ok[0]["cfg"])
                    row[f"{fmt}_tma_us"] = graph_us(calls_for(_as_w8(best)))  # re-timed at full length
                    row[f"{fmt}_err"] = ok[0]["err"]
                    row[f"{fmt}_launch"] = (f"bn{best.block_n} bm{best.block_m} split{best.split} s{best.stages} "
                                            f"w{best.num_warps}" + (f" ku{best.ku}" if best.ku > 1 else ""))
                    row[f"x_{fmt}"] = row["bf16_us"] / row[f"{fmt}_tma_us"]
                row[f"x_{fmt}_prev"] = row["bf16_us"] / row[f"{fmt}_prev_us"]
            rows.append(row)
            print({key: (round(v, 3) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
        del sets
    columns = ["shape", "M", "bf16_us", "floor_us", "int8_tma_us", "fp8_tma_us", "x_int8", "x_fp8", "int8_prev_us",
               "fp8_prev_us", "x_int8_prev", "x_fp8_prev", "int8_launch", "fp8_launch"]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": sms,
        "copy_bandwidth_tbps": round(bandwidth, 3),
        "weights": "random, per-channel scales; activations bf16, dynamic per-token scales",
        "timing": "CUDA graph of 6 calls over 3 weight copies, do_bench median of replays, per call",
        "seconds": round(time.perf_counter() - started, 1),
        "sweep": sweeps,
    }
    notes = ("N x K is out x in. <fmt>_tma_us: the TMA kernel's best launch of the sweep (launch column), re-timed; "
             "<fmt>_prev_us: the op's plan before this kernel (Triton tl.dot GEMM up to M = 16, fp8 cuBLAS above). "
             "x_<fmt>: bf16 cuBLAS us / ours. floor_us: 8-bit weights plus bf16 x and y at the measured copy "
             "bandwidth. Every W8A8 time includes the activation quantization kernel. Errors (JSON) are relative to "
             "the fp32 product with the unquantized weights (quantization error included).")
    write_results(args.out_name, f"W8A8 TMA kernel on {props.name}: microseconds per call, speed-up over bf16",
                  columns, rows, meta, notes)
    if args.write_table:
        write_table(props.name, sweeps)


def write_table(device_name: str, sweeps: list[dict]) -> None:
    """Merge each sweep's best correct launch into w8a8_tma_configs.json for this card."""
    from accel_cuda.kernels import w8a8_tma as wt

    table = json.loads(wt.TUNED_CONFIGS.read_text()) if wt.TUNED_CONFIGS.exists() else {}
    card = table.setdefault(device_name, {})
    for sw in sweeps:
        ok = [t for t in sw["timings"] if t["err"] < 5e-2]
        if ok:
            card.setdefault(f"{sw['fmt']}:{sw['n']}x{sw['k']}", {})[str(sw["m"])] = ok[0]["cfg"]
    Path(wt.TUNED_CONFIGS).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote tuned configs to {wt.TUNED_CONFIGS}")


if __name__ == "__main__":
    main()
