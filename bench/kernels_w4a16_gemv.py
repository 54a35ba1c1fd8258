"""Sweep of the W4A16 decode GEMV (accel_cuda.kernels.w4a16_gemv) launch configs against bf16 cuBLAS.

Same shapes and timing as bench/kernels_w4a16.py. Prints, per shape and M, the best configs with their register
count and spills, and writes all timings to bench/results/kernels_w4a16_gemv.json / .md; `--write-table` stores
the best config per card / shape / M in accel_cuda/kernels/w4a16_gemv_configs.json, which the planner reads.

    python bench/kernels_w4a16_gemv.py [--ms 1,2,4] [--write-table]
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
from kernels_w4a16 import GROUP, SETS, copy_bandwidth, floor_us, graph_us, make_weights, rel_err, torch_int4

SHAPES = [("up/gate", 14336, 4096), ("down", 4096, 14336)]


def candidates(m: int, n: int, k: int, sms: int, best: list | None):
    from accel_cuda.kernels.w4a16_gemv import GemvConfig

    if best:  # larger M: the best few of M=1, re-split
        base = [GemvConfig(**{**c, "split": 1}) for c in best]
    else:
        base = [GemvConfig(bn, ng, 1, pf, w) for bn, ng, pf, w in itertools.product((16, 32, 64), (1, 2, 4),
                                                                                    (True, False), (4, 8))]
    out = []
    for cfg in base:
        steps = -(-k // (cfg.ng * 128))
        tiles = -(-n // cfg.block_n) * m
        for per_sm in (4, 8, 16):
            split = max(1, min(steps, -(-per_sm * sms // tiles)))
            out.append(GemvConfig(cfg.block_n, cfg.ng, split, cfg.prefetch, cfg.num_warps))
    return list(dict.fromkeys(out))


def registers(kernel) -> list[str]:
    lines = []
    try:
        for cache in kernel.device_caches.values():
            for key, compiled in cache[0].items():
                lines.append(f"regs {compiled.n_regs:3d} spills {compiled.n_spills:3d} {str(key)[-160:]}")
    except Exception as exc:  # Triton-internal layout
        lines.append(f"register report unavailable: {exc!r}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2,4")
    parser.add_argument("--write-table", action="store_true")
    args = parser.parse_args()
    from accel_cuda.kernels import w4a16_gemv as gv

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s", flush=True)
    rows, sweep, tuned = [], [], {}
    for name, n, k in SHAPES:
        sym = [make_weights(n, k, True, seed=20 + i) for i in range(SETS)]
        asym = [make_weights(n, k, False, seed=30 + i) for i in range(SETS)]
        int4 = [torch_int4(q, s, None) for q, _, s, _, _ in sym]
        perm = [gv.permute_nibbles(p) for _, p, _, _, _ in sym]
        perm_a = [gv.permute_nibbles(p) for _, p, _, _, _ in asym]
        best_m1 = None
        for m in [int(v) for v in args.ms.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, sym[0][4])
            ref_a = torch.nn.functional.linear(x, asym[0][4])
            bf16_us = graph_us([functools.partial(torch.nn.functional.linear, x, d) for *_, d in sym], quick=True)
            int4_us = graph_us([functools.partial(torch.ops.aten._weight_int4pack_mm, x, w, GROUP, sz)
                                for w, sz in int4], quick=True)
            timings = []
            for cfg in candidates(m, n, k, sms, best_m1):
                calls = [functools.partial(gv.w4a16_gemv, x, pw, s, None, config=cfg, permuted=True)
                         for pw, (_, _, s, _, _) in zip(perm, sym, strict=True)]
                try:
                    err = rel_err(calls[0](), ref)
                    us = graph_us(calls, quick=True)
                except Exception as exc:
                    print(f"  {name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    continue
                timings.append({"cfg": cfg.__dict__, "us": us, "err": err})
            timings.sort(key=lambda t: t["us"])
            ok = [t for t in timings if t["err"] < 1e-2]
            sweep.append({"shape": name, "m": m, "bf16_us": bf16_us, "timings": timings})
            if not ok:
                print(f"{name} M={m}: no correct config", flush=True)
                continue
            if best_m1 is None:
                best_m1 = [t["cfg"] for t in ok[:6]]
            best = gv.GemvConfig(**ok[0]["cfg"])
            tuned.setdefault(f"{n}x{k}g{GROUP}", {})[str(m)] = ok[0]["cfg"]
            calls_a = [functools.partial(gv.w4a16_gemv, x, pw, s, z, config=best, permuted=True)
                       for pw, (_, _, s, z, _) in zip(perm_a, asym, strict=True)]
            err_a = rel_err(calls_a[0](), ref_a)
            asym_us = graph_us(calls_a, quick=True)
            print(f"  asym err {err_a:.1e}", flush=True)
            rows.append({"shape": f"{n}x{k} {name}", "M": m, "bf16_us": bf16_us, "torch_int4_us": int4_us,
                         "gemv_us": ok[0]["us"], "gemv_asym_us": asym_us, "floor_us": floor_us(n, k, m, bw, False),
                         "x_bf16": bf16_us / ok[0]["us"], "x_bf16_asym": bf16_us / asym_us, "err": ok[0]["err"],
                         "err_asym": err_a, "plan": str(ok[0]["cfg"])})
            print(f"{name:8s} M={m:3d} bf16 {bf16_us:5.1f} int4mm {int4_us:5.1f} asym {asym_us:5.1f} | " + " | ".join(
                f"{t['us']:5.1f} bn{t['cfg']['block_n']} ng{t['cfg']['ng']} s{t['cfg']['split']} "
                f"pf{int(t['cfg']['prefetch'])} e{t['err']:.0e}" for t in timings[:4]), flush=True)
        del sym, asym, int4, perm, perm_a
    for line in registers(gv._gemv_kernel):
        print("  " + line)
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "gemv_us", "gemv_asym_us", "floor_us", "x_bf16",
               "x_bf16_asym", "plan"]
    meta = {**environment(), "triton": triton.__version__, "sm_count": sms, "copy_bandwidth_tbps": round(bw, 3),
            "group_size": GROUP, "seconds": round(time.perf_counter() - started, 1), "sweep": sweep}
    write_results("kernels_w4a16_gemv", f"W4A16 decode GEMV on {props.name} (best config per M)", columns, rows,
                  meta, "Best correct config per M from the sweep; x_bf16 = bf16 us / ours.")
    if args.write_table:
        table = json.loads(gv.TUNED_CONFIGS.read_text()) if gv.TUNED_CONFIGS.exists() else {}
        table[props.name] = tuned
        gv.TUNED_CONFIGS.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote tuned configs to {gv.TUNED_CONFIGS}")


if __name__ == "__main__":
    main()
