"""W4A16 linear kernels on one GPU: bf16 cuBLAS vs torch's int4 kernel vs accel-cuda's Triton kernel.

Llama-3-8B MLP shapes with random weights (N x K = out x in): 14336 x 4096 (up/gate) and 4096 x 14336 (down),
4-bit, group 128, M (tokens) from 1 to 128.

Timing: each method's calls are captured in a CUDA graph, CALLS calls cycling over SETS copies of the weights
(more bytes than L2 holds, so every call reads its weights from device memory), and the graph replay is timed
with triton.testing.do_bench (median after warm-up, L2 flushed before each replay); the table gives microseconds
per call. A graph is how a decode step runs (DESIGN.md section 6), and it keeps host launch overhead out of the
device time; host_us reports that overhead separately (eager enqueue time per call, M=1). Speed-ups are over
bf16 torch.nn.functional.linear on the same card in the same run.

    python bench/kernels_w4a16.py              # the table -> bench/results/kernels_w4a16.json / .md
    python bench/kernels_w4a16.py --sweep F    # first time candidate launch configs per M (JSON to F) and
                                               # write the best per card/shape/M to the kernel's config table
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time
from collections.abc import Callable

import torch
import triton
from common import environment, write_results
from gpu_timing import copy_bandwidth, host_us, rel_err
from gpu_timing import graph_us as _graph_us

from accel.runtime.packing import pack_int32

SHAPES = [("up/gate", 14336, 4096), ("down", 4096, 14336)]
MS = [1, 2, 4, 8, 16, 32, 64, 128]
GROUP = 128
SETS = 4  # weight copies per method: 4 x 30 MB of int4 is well past the 50 MB L2
CALLS = 8  # calls per graph


def make_weights(n: int, k: int, symmetric: bool, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    groups = k // GROUP
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    zp = None if symmetric else torch.randint(-8, 8, (n, groups), generator=gen, device="cuda", dtype=torch.int8)
    cols = torch.arange(k, device="cuda") // GROUP
    w = q.float() - (zp.float()[:, cols] if zp is not None else 0.0)
    dense = (w * scale.float()[:, cols]).to(torch.bfloat16)
    return q, pack_int32(q, 4), scale, zp, dense


def torch_int4(q: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor | None):
    """torch's tinygemm int4 layout: w = (u - 8) * s + z with u = q + 8, packed by _convert_weight_to_int4pack."""
    u = (q.to(torch.int32) + 8).to(torch.uint8)
    w_uint8 = (u[:, ::2] << 4 | u[:, 1::2]).to(torch.uint8)
    packed = torch.ops.aten._convert_weight_to_int4pack(w_uint8, 8)
    zeros = -(zp.float() * scale.float()) if zp is not None else torch.zeros_like(scale, dtype=torch.float32)
    scales_and_zeros = torch.stack([scale.float().T, zeros.T], dim=-1).to(torch.bfloat16).contiguous()
    return packed, scales_and_zeros


def graph_us(calls: list[Callable[[], object]], quick: bool = False) -> float:
    """Microseconds per call over CALLS calls in a graph (gpu_timing.graph_us, 200 ms of replays)."""
    return _graph_us(calls, CALLS, quick, rep_ms=200)


def floor_us(n: int, k: int, m: int, bw_tbps: float, zp: bool) -> float:
    groups = math.ceil(k / GROUP)
    nbytes = n * k / 2 + n * groups * 2 + (n * groups if zp else 0) + m * k * 2 + m * n * 2
    return nbytes / (bw_tbps * 1e12) * 1e6


def sweep_configs(m: int, n: int, sms: int):
    """Candidates per M (earlier sweeps on H200 pruned the rest; KERNEL_NOTES.md)."""
    from accel_cuda.kernels.w4a16 import Config

    cands = [Config("dequant", block_n=32)]
    if m == 1:
        cands += [Config("gemv", block_m=1, block_n=32, split=s, prefetch=True, num_stages=1) for s in (1, 4)]
    bm = min(128, max(16, 1 << (m - 1).bit_length()))
    if bm == 16:
        tiles = [("dot", 64, 1), ("dot", 32, 2), ("dot8", 32, 1), ("dot8", 64, 1), ("dot8", 128, 1), ("dot8", 64, 2)]
        splits = (1, 2, 4, 8)
    elif bm == 32:
        tiles, splits = [("dot", 64, 2), ("dot8", 64, 1), ("dot8", 128, 1)], (1, 2, 4)
    else:
        tiles = [("dot", 64, 1), ("dot", 128, 1), ("dot8", 64, 1), ("dot8", 128, 1)]
        splits = (1, 2, 4)
    for (kernel, bn, num_g), split in itertools.product(tiles, splits):
        if math.ceil(n / bn) * math.ceil(m / bm) * split > 12 * sms:
            continue
        warps = 8 if bn * 128 * num_g >= 16384 or bn * bm >= 64 * 64 else 4
        cands.append(Config(kernel, block_m=bm, block_n=bn, num_g=num_g, split=split, num_warps=warps,
                            num_stages=3))
    return cands


def run_sweep(path: str, sms: int, device_name: str) -> None:
    from accel_cuda.kernels import w4a16

    results, tuned = [], {}
    for name, n, k in SHAPES:
        sets = [make_weights(n, k, True, seed=10 + i) for i in range(SETS)]
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, sets[0][4])
            timings = []
            for cfg in sweep_configs(m, n, sms):
                calls = [functools.partial(w4a16.w4a16_linear, x, p, s, None, GROUP, config=cfg)
                         for _, p, s, _, _ in sets]
                try:
                    err = rel_err(calls[0](), ref)
                    us = graph_us(calls, quick=True)
                except Exception as exc:  # a config that fails to compile or launch is reported, not fatal
                    print(f"  {name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    continue
                timings.append({"cfg": cfg.__dict__, "us": us, "err": err})
            timings.sort(key=lambda t: t["us"])
            ok = [t for t in timings if t["err"] < 1e-2]
            results.append({"shape": name, "n": n, "k": k, "m": m, "timings": timings})
            if ok:
                tuned.setdefault(f"{n}x{k}g{GROUP}", {})[str(m)] = ok[0]["cfg"]
            print(f"sweep {name:8s} M={m:4d} " + " | ".join(
                f"{t['us']:6.1f}us {t['cfg']['kernel']} bm{t['cfg']['block_m']} bn{t['cfg']['block_n']} "
                f"g{t['cfg']['num_g']} s{t['cfg']['split']} w{t['cfg']['num_warps']} e{t['err']:.0e}"
                for t in timings[:3]), flush=True)
            if len(ok) < len(timings):
                print(f"  WRONG: {len(timings) - len(ok)} configs with error >= 1e-2")
        del sets
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    table = json.loads(w4a16.TUNED_CONFIGS.read_text()) if w4a16.TUNED_CONFIGS.exists() else {}
    table[device_name] = tuned
    w4a16.TUNED_CONFIGS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    w4a16._tuned.cache_clear()
    print(f"wrote {len(tuned)} shapes of tuned configs for {device_name} to {w4a16.TUNED_CONFIGS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", metavar="JSON", help="first time candidate configs and write them here")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    args = parser.parse_args()

    from accel_cuda.kernels.w4a16 import Config, plan, w4a16_linear

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    if args.sweep:
        run_sweep(args.sweep, sms, props.name)
    if args.no_table:
        return
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s (read + write)", flush=True)
    rows = []
    int4_error = None
    for name, n, k in SHAPES:
        sym = [make_weights(n, k, True, seed=20 + i) for i in range(SETS)]
        asym = [make_weights(n, k, False, seed=30 + i) for i in range(SETS)]
        try:
            int4 = [torch_int4(q, s, None) for q, _, s, _, _ in sym]
        except Exception as exc:
            int4 = None
            int4_error = f"{type(exc).__name__}: {exc}"
            print(f"torch int4 packing failed on this card: {int4_error}")
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, sym[0][4])
            ref_a = torch.nn.functional.linear(x, asym[0][4])
            cfg = plan(m, n, k, GROUP, torch.bfloat16, sms, props.name)
            row: dict[str, object] = {"shape": f"{n}x{k} {name}", "M": m}
            bf16 = [functools.partial(torch.nn.functional.linear, x, d) for _, _, _, _, d in sym]
            ours = [functools.partial(w4a16_linear, x, p, s, None, GROUP) for _, p, s, _, _ in sym]
            ours_a = [functools.partial(w4a16_linear, x, p, s, z, GROUP) for _, p, s, z, _ in asym]
            dq = [functools.partial(w4a16_linear, x, p, s, None, GROUP, config=Config("dequant"))
                  for _, p, s, _, _ in sym]
            row["bf16_us"] = graph_us(bf16)
            if int4 is not None:
                fn4 = [functools.partial(torch.ops.aten._weight_int4pack_mm, x, w, GROUP, sz) for w, sz in int4]
                try:
                    row["int4mm_err"] = rel_err(fn4[0](), ref)
                    row["torch_int4_us"] = graph_us(fn4)
                except Exception as exc:
                    int4_error = f"{type(exc).__name__}: {exc}"
                    print(f"torch int4 mm failed at M={m}: {int4_error}")
            row["triton_err"] = rel_err(ours[0](), ref)
            row["triton_asym_err"] = rel_err(ours_a[0](), ref_a)
            row["dq_err"] = rel_err(dq[0](), ref)
            row["triton_us"] = graph_us(ours)
            row["triton_asym_us"] = graph_us(ours_a)
            row["dq_cublas_us"] = graph_us(dq)
            row["floor_us"] = floor_us(n, k, m, bw, False)
            row["x_bf16"] = row["bf16_us"] / row["triton_us"]
            row["x_bf16_asym"] = row["bf16_us"] / row["triton_asym_us"]
            if "torch_int4_us" in row:
                row["int4mm_x_bf16"] = row["bf16_us"] / row["torch_int4_us"]
            if m == 1:
                row["host_us"] = host_us(ours[0])
                row["bf16_host_us"] = host_us(bf16[0])
            row["plan"] = (f"{cfg.kernel} bm{cfg.block_m} bn{cfg.block_n} bk{cfg.block_k}x{cfg.num_g} "
                           f"split{cfg.split} w{cfg.num_warps}")
            rows.append(row)
            print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
        del sym, asym, int4
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "triton_us", "triton_asym_us", "dq_cublas_us", "floor_us",
               "x_bf16", "x_bf16_asym", "int4mm_x_bf16", "plan"]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": sms,
        "copy_bandwidth_tbps": round(bw, 3),
        "group_size": GROUP,
        "weights": "random codes, bf16 scales; symmetric unless 'asym' (int8 zero points)",
        "timing": f"CUDA graph of {CALLS} calls over {SETS} weight copies, do_bench median of replays, per call",
        "torch_int4": int4_error or "torch.ops.aten._weight_int4pack_mm (tinygemm), innerKTiles 8",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "N x K is out x in. floor_us: bytes of int4 weights + bf16 scales + x + y over the measured copy "
        "bandwidth. x_bf16: bf16 time / Triton time (symmetric); x_bf16_asym the same with int8 zero points. "
        "dq_cublas_us: the Triton dequantize kernel, then cuBLAS bf16. plan: the launch the kernel picked "
        "(tuned table accel_cuda/kernels/w4a16_configs.json for this card and shape). host_us (JSON, M=1): "
        "eager host time per call, which a CUDA graph removes."
    )
    write_results("kernels_w4a16", f"W4A16 linear on {props.name}: microseconds per call and speed-up over bf16",
                  columns, rows, meta, notes)


if __name__ == "__main__":
    main()
