"""TMA-pipelined decode GEMVs (accel_cuda.kernels.w4a16_gemv_tma, w4a16_sparse24_tma) against the register-prefetch
GEMVs they would replace, bf16 cuBLAS and torch's int4 kernel, on Llama-3-8B shapes with random weights (group 128).

Dense int4 and 2:4 x int4 hold the same weights (the dense codes with the pruned positions at zero). Each kernel's
launch configs are swept per shape and M; the best correct one is timed side by side with the rest in one run on one
card (CUDA-graph replays over 4 weight copies, past L2). Writes bench/results/kernels_tma.json / .md; `--write-table`
merges the best configs into the kernels' tuned tables (w4a16_gemv_tma_configs.json for the W4A16 op,
w4a16_sparse24_tma_configs.json for the 2:4 op); `--table-from RESULTS.json` does the same from a stored run.

    python bench/kernels_tma.py [--ms 1,2] [--decode-shapes] [--k-scan] [--write-table]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import time
from pathlib import Path

import torch
import triton
from common import environment, write_results
from kernels_sparse24 import SHAPES, make_sparse
from kernels_w4a16 import GROUP, SETS, copy_bandwidth, graph_us, rel_err, torch_int4

from accel.runtime.packing import pack_int32

# The other W4A16 GEMVs of a Llama-3-8B decode step as the runtime fuses them (q/k/v, o, gate+up, and lm_head when
# it is quantized too), tuned for the dense TMA GEMV only.
DECODE_SHAPES = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate+up", 28672, 4096), ("lm_head", 128256, 4096)]


def tma_candidates(cls, m: int, n: int, k: int, sms: int, supports, quick: bool):
    out = []
    space = itertools.product((8, 16, 32, 64), (8, 16), (2, 3, 4), (4, 8)) if not quick else [(16, 8, 3, 4)]
    for bn, ng, stages, warps in space:
        steps = k // (ng * 128)
        tiles = -(-n // bn) * m
        for per_sm in (0, 2, 4, 8):  # 0: no split-K whatever the tile count (session 9: best for o at M=1)
            want = 1 if per_sm == 0 else max(1, min(steps, -(-per_sm * sms // tiles)))
            split = next(s for s in range(want, 0, -1) if steps % s == 0)
            cfg = cls(bn, ng, split, stages, warps)
            if supports(n, k, cfg):
                out.append(cfg)
    return list(dict.fromkeys(out))


def sweep(name: str, calls_for, configs, ref) -> list[dict]:
    timings = []
    for cfg in configs:
        calls = calls_for(cfg)
        try:
            err = rel_err(calls[0](), ref)
            us = graph_us(calls, quick=True)
        except Exception as exc:
            print(f"  {name} {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        timings.append({"cfg": cfg.__dict__, "us": us, "err": err})
    timings.sort(key=lambda t: t["us"])
    return timings


def fixed_cost_scan(gt, st, sg, tuned) -> list[dict]:
    """Time per call against K at N = 14336 for bf16 cuBLAS and both TMA kernels (M = 1): the least-squares line
    t = t0 + bytes / B gives each one's fixed cost per call t0 (launch, ramp, tail) and streaming bandwidth B."""
    n = 14336
    out = []
    plans = {name: tuned[name].get(f"{n}x4096g{GROUP}", {}).get("1") for name in ("dense", "sparse")}
    dense_cfg = gt.TmaGemvConfig(**{**(plans["dense"] or {}), "ng": 8, "split": 1})
    sparse_cfg = st.TmaSparseConfig(**{**(plans["sparse"] or {}), "split": 1})
    for k in (1024, 2048, 4096, 8192, 16384):
        sets = [make_sparse(n, k, seed=70 + i) for i in range(SETS)]
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        dense = [(gv_permute(q), s) for q, _, _, s, _ in sets]
        sparse = [(st.interleave_rows(w), st.interleave_rows(p), s)
                  for w, p, s in ((*sg.prepare_sparse24(v, i), s) for _, v, i, s, _ in sets)]
        row = {"k": k,
               "bf16_us": graph_us([functools.partial(torch.nn.functional.linear, x, d) for *_, d in sets], quick=True),
               "dense_tma_us": graph_us([functools.partial(gt.w4a16_tma_gemv, x, w, s, None, config=dense_cfg)
                                         for w, s in dense], quick=True),
               "sparse_tma_us": graph_us([functools.partial(st.w4a16_sparse24_tma_gemv, x, w, p, s, None,
                                                            config=sparse_cfg) for w, p, s in sparse], quick=True),
               "bf16_bytes": n * k * 2, "dense_bytes": n * k / 2 + n * k // 64,
               "sparse_bytes": n * k * 3 / 8 + n * k // 64}
        out.append(row)
        print(f"k-scan K={k}: bf16 {row['bf16_us']:.1f} dense_tma {row['dense_tma_us']:.1f} "
              f"sparse_tma {row['sparse_tma_us']:.1f} us", flush=True)
        del sets, dense, sparse
    points = list(out)
    for name in ("bf16", "dense", "sparse"):
        xs = torch.tensor([r[f"{name}_bytes"] for r in points], dtype=torch.float64)
        ys = torch.tensor([r[f"{name}_us" if name == "bf16" else f"{name}_tma_us"] for r in points],
                          dtype=torch.float64)
        slope, t0 = torch.linalg.lstsq(torch.stack([xs, torch.ones_like(xs)], 1), ys[:, None]).solution[:, 0].tolist()
        out.append({"fit": name, "fixed_us": t0, "stream_tbps": 1e-6 / slope})
        print(f"fit {name}: fixed {t0:.2f} us per call, streaming {1e-6 / slope:.2f} TB/s", flush=True)
    return out


def gv_permute(q: torch.Tensor) -> torch.Tensor:
    from accel_cuda.kernels.w4a16_gemv import permute_nibbles

    return permute_nibbles(pack_int32(q, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default="1,2")
    parser.add_argument("--quick", action="store_true", help="one config per kernel (smoke run)")
    parser.add_argument("--write-table", action="store_true")
    parser.add_argument("--table-from", default="", help="write the tuned tables from a stored results JSON (no GPU)")
    parser.add_argument("--decode-shapes", action="store_true", help="also tune the dense TMA GEMV on " + ", ".join(
        name for name, *_ in DECODE_SHAPES))
    parser.add_argument("--k-scan", action="store_true", help="time vs K at N=14336: fixed cost per call by a fit")
    parser.add_argument("--only", default="", help="comma-separated shape names to run (default: all)")
    args = parser.parse_args()
    if args.table_from:
        meta = json.loads(Path(args.table_from).read_text())["meta"]
        dims = {name: (n, k) for name, n, k in SHAPES + DECODE_SHAPES}
        write_tables(meta["device"], [{**sw, "n": dims[sw["shape"]][0], "k": dims[sw["shape"]][1]} if "n" not in sw
                                      else sw for sw in meta["sweep"]])
        return
    from accel_cuda.kernels import w4a16_gemv as gv
    from accel_cuda.kernels import w4a16_gemv_tma as gt
    from accel_cuda.kernels import w4a16_sparse24_gemv as sg
    from accel_cuda.kernels import w4a16_sparse24_tma as st

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s", flush=True)
    rows, sweeps, tuned = [], [], {"dense": {}, "sparse": {}}
    for name, n, k in SHAPES + (DECODE_SHAPES if args.decode_shapes else []):
        if args.only and name not in args.only.split(","):
            continue
        with_sparse = (name, n, k) in SHAPES
        sets = [make_sparse(n, k, seed=40 + i) for i in range(SETS)]
        sparse = [(*sg.prepare_sparse24(v, i), s) for _, v, i, s, _ in sets]
        sparse_r4 = [(st.interleave_rows(w), st.interleave_rows(p), s) for w, p, s in sparse]
        dense = [(gv.permute_nibbles(pack_int32(q, 4)), s) for q, _, _, s, _ in sets]
        int4 = [torch_int4(q, s, None) for q, _, _, s, _ in sets]
        for m in [int(v) for v in args.ms.split(",")]:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x.double(), sets[0][4].double())
            bf16_us = graph_us([functools.partial(torch.nn.functional.linear, x, d) for *_, d in sets], quick=True)
            int4_us = graph_us([functools.partial(torch.ops.aten._weight_int4pack_mm, x, w, GROUP, sz)
                                for w, sz in int4], quick=True)
            dense_cfg = gv.gemv_plan(m, n, k, sms, props.name) or gv.GemvConfig()
            dense_calls = [functools.partial(gv.w4a16_gemv, x, w, s, None, config=dense_cfg, permuted=True)
                           for w, s in dense]
            dense_us = graph_us(dense_calls, quick=True)
            sp_us = float("nan")
            if with_sparse:
                sp_cfg = sg.sparse24_plan(m, n, k, sms, props.name) or sg.SparseGemvConfig()
                sp_us = graph_us([functools.partial(sg.w4a16_sparse24_gemv, x, w, p, s, None, config=sp_cfg)
                                  for w, p, s in sparse], quick=True)
            def dense_calls_for(c, x=x, dense=dense):
                return [functools.partial(gt.w4a16_tma_gemv, x, w, s, None, config=c) for w, s in dense]

            def sparse_calls_for(c, x=x, sparse=sparse_r4):
                return [functools.partial(st.w4a16_sparse24_tma_gemv, x, w, p, s, None, config=c)
                        for w, p, s in sparse]

            dt = sweep("dense_tma", dense_calls_for,
                       tma_candidates(gt.TmaGemvConfig, m, n, k, sms, gt.supports_tma, args.quick), ref)
            stt = sweep("sparse_tma", sparse_calls_for,
                        tma_candidates(st.TmaSparseConfig, m, n, k, sms, st.supports_tma, args.quick), ref) if (
                with_sparse) else [{"cfg": {}, "us": float("nan"), "err": 0.0}]
            sweeps.append({"shape": name, "n": n, "k": k, "m": m, "dense_tma": dt, "sparse_tma": stt})
            d_ok = [t for t in dt if t["err"] < 1e-2]
            s_ok = [t for t in stt if t["err"] < 1e-2]
            if not d_ok or not s_ok:
                print(f"{name} M={m}: no correct TMA config (dense {dt[:2]}, sparse {stt[:2]})", flush=True)
                continue
            d_best, s_best = d_ok[0], s_ok[0]
            tuned["dense"].setdefault(f"{n}x{k}g{GROUP}", {})[str(m)] = d_best["cfg"]
            tuned["sparse"].setdefault(f"{n}x{k}g{GROUP}", {})[str(m)] = s_best["cfg"]
            dense_bytes = n * k / 2 + n * (k // GROUP) * 2
            sparse_bytes = n * k * 3 / 8 + n * (k // GROUP) * 2
            best_dense = min(dense_us, d_best["us"])
            rows.append({
                "shape": f"{n}x{k} {name}", "M": m, "bf16_us": bf16_us, "torch_int4_us": int4_us,
                "dense_gemv_us": dense_us, "dense_tma_us": d_best["us"], "sparse_gemv_us": sp_us,
                "sparse_tma_us": s_best["us"], "dense_floor_us": dense_bytes / (bw * 1e6),
                "sparse_floor_us": sparse_bytes / (bw * 1e6), "dense_tma_x_bf16": bf16_us / d_best["us"],
                "sparse_tma_x_best_dense": best_dense / s_best["us"], "dense_tma_err": d_best["err"],
                "sparse_tma_err": s_best["err"], "dense_plan": str(d_best["cfg"]), "sparse_plan": str(s_best["cfg"]),
            })
            print(f"{name:8s} M={m} bf16 {bf16_us:5.1f} int4mm {int4_us:5.1f} dense {dense_us:5.1f} sparse {sp_us:5.1f}"
                  f" || dense_tma " + " | ".join(f"{t['us']:5.1f} {tuple(t['cfg'].values())}" for t in d_ok[:3])
                  + " || sparse_tma " + " | ".join(f"{t['us']:5.1f} {tuple(t['cfg'].values())}" for t in s_ok[:3]),
                  flush=True)
        del sets, sparse, sparse_r4, dense, int4
    k_scan = fixed_cost_scan(gt, st, sg, tuned) if args.k_scan else []
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "dense_gemv_us", "dense_tma_us", "sparse_gemv_us",
               "sparse_tma_us", "dense_floor_us", "sparse_floor_us", "dense_tma_x_bf16", "sparse_tma_x_best_dense",
               "dense_tma_err", "sparse_tma_err", "dense_plan", "sparse_plan"]
    meta = {**environment(), "triton": triton.__version__, "sm_count": sms, "copy_bandwidth_tbps": round(bw, 3),
            "group_size": GROUP, "seconds": round(time.perf_counter() - started, 1), "k_scan": k_scan,
            "sweep": sweeps}
    write_results("kernels_tma", f"TMA-pipelined decode GEMVs on {props.name}", columns, rows, meta,
                  "Best correct config per M from the sweep. dense_gemv / sparse_gemv: the register-prefetch kernels "
                  "with their tuned plans; *_tma: the TMA-pipelined kernels; sparse_tma_x_best_dense = the faster "
                  "dense int4 kernel's us / 2:4 TMA us; floors = each form's bytes at the measured copy bandwidth.")
    if args.write_table:
        write_tables(props.name, sweeps)


def write_tables(device_name: str, sweeps: list[dict]) -> None:
    """Merge each sweep's best correct launch per shape and M into the two kernels' tuned tables for this card."""
    from accel_cuda.kernels import w4a16_gemv_tma as gt
    from accel_cuda.kernels import w4a16_sparse24_tma as st

    for kind, path in (("dense_tma", gt.TUNED_CONFIGS), ("sparse_tma", st.TUNED_CONFIGS)):
        table = json.loads(path.read_text()) if path.exists() else {}
        card = table.setdefault(device_name, {})
        for sw in sweeps:
            ok = [t for t in sw[kind] if t["cfg"] and t["err"] < 1e-2]
            if ok:
                card.setdefault(f"{sw['n']}x{sw['k']}g{GROUP}", {})[str(sw["m"])] = ok[0]["cfg"]
        path.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
        print(f"wrote tuned configs to {path}")


if __name__ == "__main__":
    main()
