"""2:4-sparse x int4 decode GEMV (accel_cuda.kernels.w4a16_sparse24_gemv) against our dense int4 GEMV, bf16 cuBLAS
and torch's int4 kernel, on Llama-3-8B shapes with random weights (group 128).

Sweeps the sparse kernel's launch configs per shape and M, takes the best correct one, and times every method side by
side in one run on one card (CUDA-graph replays over 4 weight copies, past L2). Writes
bench/results/kernels_sparse24.json / .md; `--write-table` stores the best config per card / shape / M in
accel_cuda/kernels/w4a16_sparse24_configs.json, which the planner reads.

    python bench/kernels_sparse24.py [--ms 1,2] [--write-table]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time

import torch
import triton
from common import environment, write_results
from kernels_w4a16 import GROUP, SETS, copy_bandwidth, graph_us, rel_err, torch_int4

from accel.runtime.packing import pack_int32

SHAPES = [("up/gate", 14336, 4096), ("down", 4096, 14336)]


def make_sparse(n: int, k: int, seed: int):
    """Random 2:4-sparse int4 weights: codes, their compact form (values, indices), scales, dense bf16 W, and the
    dense int4 codes with the pruned positions at zero (what the dense kernel reads for the same W)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    keep = torch.rand(n, k // 4, 4, generator=gen, device="cuda").argsort(dim=2)[..., :2].sort(dim=2).values
    mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device="cuda").scatter_(2, keep, True).reshape(n, k)
    q = torch.where(mask, q, torch.zeros_like(q))
    kept = q.reshape(n, k // 4, 4).gather(2, keep).reshape(n, k // 2)
    idx = keep.reshape(n, k // 8, 4).to(torch.int32)
    indices = (idx[..., 0] | idx[..., 1] << 2 | idx[..., 2] << 4 | idx[..., 3] << 6).to(torch.uint8)
    scale = (torch.rand(n, k // GROUP, generator=gen, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    cols = torch.arange(k, device="cuda") // GROUP
    dense = (q.float() * scale.float()[:, cols]).to(torch.bfloat16)
    return q, pack_int32(kept, 4), indices, scale, dense


def candidates(m: int, n: int, k: int, sms: int, pair: bool):
    from accel_cuda.kernels.w4a16_sparse24_gemv import SparseGemvConfig

    out = []
    grid = itertools.product((16, 32, 64), (2, 4, 8), (False,), (2, 4, 8)) if pair else itertools.product(
        (8, 16, 32), (2, 4, 8), (True, False), (2, 4, 8))
    for bn, ng, pf, w in grid:
        steps = -(-k // (ng * 128))
        tiles = -(-n // bn) * m
        for per_sm in (4, 8, 16):
            out.append(SparseGemvConfig(bn, ng, max(1, min(steps, -(-per_sm * sms // tiles))), pf, w))
    return list(dict.fromkeys(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2")
    parser.add_argument("--write-table", action="store_true")
    parser.add_argument("--dump-ir", default="", help="directory to write the best kernel's TTGIR / SASS into")
    args = parser.parse_args()
    from accel_cuda.kernels import w4a16_gemv as gv
    from accel_cuda.kernels import w4a16_sparse24_gemv as sg
    from accel_cuda.kernels import w4a16_sparse24_pair as sp

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s", flush=True)
    rows, sweep, tuned = [], [], {}
    for name, n, k in SHAPES:
        sets = [make_sparse(n, k, seed=40 + i) for i in range(SETS)]
        sparse = [(*sg.prepare_sparse24(v, i), s) for _, v, i, s, _ in sets]
        paired = [(*sp.prepare_pairs(w, p), s) for w, p, s in sparse]
        dense_words = [gv.permute_nibbles(pack_int32(q, 4)) for q, *_ in sets]
        int4 = [torch_int4(q, s, None) for q, _, _, s, _ in sets]
        for m in [int(v) for v in args.ms.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x.double(), sets[0][4].double()).to(torch.float64)
            bf16_us = graph_us([functools.partial(torch.nn.functional.linear, x, d) for *_, d in sets], quick=True)
            int4_us = graph_us([functools.partial(torch.ops.aten._weight_int4pack_mm, x, w, GROUP, sz)
                                for w, sz in int4], quick=True)
            dense_cfg = gv.gemv_plan(m, n, k, sms, props.name) or gv.GemvConfig()
            dense_calls = [functools.partial(gv.w4a16_gemv, x, w, s, None, config=dense_cfg, permuted=True)
                           for w, (_, _, _, s, _) in zip(dense_words, sets, strict=True)]
            dense_err = rel_err(dense_calls[0](), ref)
            dense_us = graph_us(dense_calls, quick=True)
            timings = []
            for kind, fn, tensors in (("row", sg.w4a16_sparse24_gemv, sparse), ("pair", sp.w4a16_sparse24_pair_gemv,
                                                                                 paired)):
                for cfg in candidates(m, n, k, sms, kind == "pair"):
                    calls = [functools.partial(fn, x, w, p, s, None, config=cfg) for w, p, s in tensors]
                    try:
                        err = rel_err(calls[0](), ref)
                        us = graph_us(calls, quick=True)
                    except Exception as exc:
                        print(f"  {name} M={m} {kind} {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                        continue
                    timings.append({"kernel": kind, "cfg": cfg.__dict__, "us": us, "err": err})
            timings.sort(key=lambda t: t["us"])
            ok = [t for t in timings if t["err"] < 1e-2]
            sweep.append({"shape": name, "m": m, "timings": timings})
            if not ok:
                print(f"{name} M={m}: no correct config ({timings[:3]})", flush=True)
                continue
            best = next(t for t in ok if t["kernel"] == "row")  # the kernel the runtime ships
            pair_best = next((t for t in ok if t["kernel"] == "pair"), None)
            tuned.setdefault(f"{n}x{k}g{GROUP}", {})[str(m)] = best["cfg"]
            sparse_bytes = n * k * 3 / 8 + n * (k // GROUP) * 2
            rows.append({"shape": f"{n}x{k} {name}", "M": m, "bf16_us": bf16_us, "torch_int4_us": int4_us,
                         "dense_int4_us": dense_us, "sparse24_us": best["us"],
                         "floor_us": sparse_bytes / (bw * 1e6), "x_dense_int4": dense_us / best["us"],
                         "x_bf16": bf16_us / best["us"], "err": best["err"], "dense_err": dense_err,
                         "pair_us": pair_best["us"] if pair_best else None,
                         "pair_x_dense_int4": dense_us / pair_best["us"] if pair_best else None,
                         "plan": str(best["cfg"])})
            print(f"{name:8s} M={m} bf16 {bf16_us:5.1f} int4mm {int4_us:5.1f} dense {dense_us:5.1f} | " + " | ".join(
                f"{t['kernel']} {t['us']:5.1f} bn{t['cfg']['block_n']} ng{t['cfg']['ng']} s{t['cfg']['split']} "
                f"pf{int(t['cfg']['prefetch'])} w{t['cfg']['num_warps']} e{t['err']:.0e}" for t in ok[:4]), flush=True)
        del sets, sparse, dense_words, int4
    if args.dump_ir:  # per compiled variant: its key, registers and the layout conversions its TTGIR has
        summary = []
        for kernel in (sg._sparse_gemv_kernel, sp._pair_kernel):
            for cache in kernel.device_caches.values():
                for key, compiled in cache[0].items():
                    ttgir = compiled.asm.get("ttgir", "")
                    summary.append({"kernel": kernel.fn.__name__, "key": str(key)[-400:], "regs": compiled.n_regs,
                                    "spills": compiled.n_spills, "converts": ttgir.count("convert_layout"),
                                    "barriers_in_sass": compiled.asm.get("sass", "").count("BAR.SYNC")})
        with open(f"{args.dump_ir}/variants.json", "w") as f:
            json.dump(summary, f, indent=1)
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "dense_int4_us", "sparse24_us", "floor_us", "x_dense_int4",
               "x_bf16", "pair_us", "pair_x_dense_int4", "err", "plan"]
    meta = {**environment(), "triton": triton.__version__, "sm_count": sms, "copy_bandwidth_tbps": round(bw, 3),
            "group_size": GROUP, "seconds": round(time.perf_counter() - started, 1), "sweep": sweep}
    write_results("kernels_sparse24", f"2:4-sparse x int4 decode GEMV on {props.name}", columns, rows, meta,
                  "Best correct config per M; x_dense_int4 = our dense int4 GEMV us / 2:4 us, x_bf16 = cuBLAS bf16 us "
                  "/ 2:4 us; floor = the 2:4 form's bytes at the measured copy bandwidth.")
    if args.write_table:
        table = json.loads(sg.TUNED_CONFIGS.read_text()) if sg.TUNED_CONFIGS.exists() else {}
        table[props.name] = tuned
        sg.TUNED_CONFIGS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote tuned configs to {sg.TUNED_CONFIGS}")


if __name__ == "__main__":
    main()
