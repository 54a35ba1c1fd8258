"""TMA-pipelined tensor-core W4A16 / W8A16 kernel (accel_cuda.kernels.wxa16_tma_dot) against bf16 cuBLAS, torch's int4
kernel, the W4A16 op's earlier kernels for the same M, and dequantize-then-cuBLAS (W8A16's earlier path).

Llama-3-8B MLP shapes (N x K = 14336 x 4096 up/gate, 4096 x 14336 down) with random symmetric weights, M from 1 to
128: int4 with group-128 scales (the W4A16 artifact), int8 with one scale per channel (W8A16 as llm-compressor's
preset and the runtime's w8a16 hold it). `--decode-shapes` sweeps the other linears of a fused decode step instead
(q/k/v, o, gate+up) and writes kernels_tma_dot_decode_shapes.json / .md. Every launch config in a small space is
swept per shape, M and bit width; the best correct one (relative error < 1e-2 against the bf16 weights' product)
is timed side by side with the others in one run on one card (CUDA-graph replays over 4 weight copies, past L2).
The kernels are compiled first by a pool of processes (Triton's on-disk cache), so the sweep times, not compiles.
Writes bench/results/kernels_tma_dot.json / .md; `--write-table` merges the best configs into
accel_cuda/kernels/wxa16_tma_dot_configs.json (W4 at M = 1, 2 only where it beat the decode GEMV); `--table-from
RESULTS.json` does the same from a stored run.

    python bench/kernels_tma_dot.py [--ms 1,2,3,4,8,16,32,64,128] [--write-table] [--workers 14]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing
import time
from pathlib import Path

import torch
import triton
from common import environment, write_results
from kernels_tma import DECODE_SHAPES
from kernels_w4a16 import GROUP, SETS, SHAPES, copy_bandwidth, graph_us, rel_err, torch_int4

from accel.runtime.packing import pack_int32

MS = [1, 2, 3, 4, 8, 16, 32, 64, 128]


def candidates(m: int, n: int, k: int, bits: int, sms: int) -> list:
    """Launch configs for this M: activation tiles of the next power of two >= M (and half that from 64), weight
    tiles 64 / 128, 1-2 groups per step, 3-4 stages (2-5 from M = 64, where fewer stages let two programs share an
    SM and more hide the longer steps), no split-K and split-K to about 1, 2 or 4 programs per SM (session 12:
    bn128 bm128 w8 without a split was never tried and is 25% faster at M = 128 than its split-2 twin)."""
    from accel_cuda.kernels.wxa16_tma_dot import TmaDotConfig, supports_tma_dot

    bm0 = min(max(16, 1 << max(0, (m - 1).bit_length())), 128)
    stage_counts = (2, 3, 4, 5) if m >= 64 else (3, 4)
    out = []
    for bm, bn, ng, stages in itertools.product(sorted({bm0, max(16, bm0 // 2) if bm0 >= 64 else bm0}), (64, 128),
                                                (1, 2), stage_counts):
        for warps in (4, 8):
            steps = k // (ng * GROUP)
            tiles = (n // bn) * -(-m // bm)
            splits = {1}
            for per_sm in (1, 2, 4):
                want = max(1, min(steps, -(-per_sm * sms // tiles)))
                splits.add(next(s for s in range(want, 0, -1) if steps % s == 0))
            for split in sorted(splits):
                cfg = TmaDotConfig(bn, bm, ng, split, stages, warps)
                if supports_tma_dot(n, k, k // GROUP if bits == 4 else 1, cfg, bits):
                    out.append(cfg)
    return list(dict.fromkeys(out))


def _compile_worker(jobs: list[tuple[int, dict]]) -> int:
    """Run each (bits, config) once on small tensors: fills Triton's on-disk cache for the sweep's process."""
    from accel_cuda.kernels.wxa16_tma_dot import TmaDotConfig, wxa16_tma_dot

    done = 0
    for bits, fields in jobs:
        cfg = TmaDotConfig(**fields)
        n, k = cfg.block_n * 2, 128 * cfg.ng * cfg.split * 8
        w = (torch.zeros(n, k // 8, dtype=torch.int32, device="cuda") if bits == 4
             else torch.zeros(n, k, dtype=torch.int8, device="cuda"))
        s = torch.ones(n, k // GROUP if bits == 4 else 1, dtype=torch.bfloat16, device="cuda")
        x = torch.zeros(cfg.block_m, k, dtype=torch.bfloat16, device="cuda")
        try:
            wxa16_tma_dot(x, w, s, None, bits=bits, config=cfg)
            done += 1
        except Exception as exc:  # reported by the sweep itself
            print(f"  compile {bits} {cfg}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    torch.cuda.synchronize()
    return done


def precompile(jobs: list[tuple[int, dict]], workers: int) -> None:
    jobs = list(dict.fromkeys((b, tuple(sorted(f.items()))) for b, f in jobs))
    shards = [[(b, dict(f)) for b, f in jobs[i::workers]] for i in range(workers)]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        done = sum(pool.map(_compile_worker, shards))
    print(f"precompiled {done}/{len(jobs)} kernels in {time.perf_counter() - started:.0f} s", flush=True)


def _calls(x, weights, scales, bits, cfg) -> list:
    from accel_cuda.kernels.wxa16_tma_dot import wxa16_tma_dot

    return [functools.partial(wxa16_tma_dot, x, w, s, None, bits=bits, config=cfg)
            for w, s in zip(weights, scales, strict=True)]


def sweep(calls_for, configs, ref) -> list[dict]:
    """Time each config; its error is the worse of two checks, before and after the timing (Triton 3.6 builds a
    racy kernel for bn64 bm128 ng1 3 stages 4 warps on the H200: right in one run, NaN or wrong in the next,
    KERNEL_NOTES.md session 12), so a config that is right only sometimes does not enter the table."""
    timings = []
    for cfg in configs:
        calls = calls_for(cfg)
        try:
            first = rel_err(calls[0](), ref)
            us = graph_us(calls, quick=True)
            errs = (first, rel_err(calls[0](), ref))
            err = max(errs) if all(math.isfinite(e) for e in errs) else float("inf")
        except Exception as exc:  # a config that fails to compile or launch is reported, not fatal
            print(f"  {cfg}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            continue
        timings.append({"cfg": cfg.__dict__, "us": us, "err": err})
    timings.sort(key=lambda t: t["us"])
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ms", default=",".join(map(str, MS)))
    parser.add_argument("--write-table", action="store_true")
    parser.add_argument("--workers", type=int, default=14)
    parser.add_argument("--decode-shapes", action="store_true", help="sweep q/k/v, o, gate+up, lm_head instead")
    parser.add_argument("--bits", default="4,8", help="which weight widths to sweep (the other's columns stay empty)")
    parser.add_argument("--out-name", default="", help="results file stem (default kernels_tma_dot[_decode_shapes])")
    parser.add_argument("--table-from", default="", help="write the tuned table from a stored results JSON (no GPU)")
    parser.add_argument("--only", default="", help="comma-separated shape names to run (default: all)")
    args = parser.parse_args()
    if args.table_from:
        data = json.loads(Path(args.table_from).read_text())
        write_table(data["meta"]["device"], data["meta"]["sweep"], data["rows"])
        return
    from accel_cuda.kernels import w4a16
    from accel_cuda.kernels.w4a16_gemv import permute_nibbles

    from accel.quantization.kernels.reference import dequant_linear

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    ms = [int(v) for v in args.ms.split(",")]
    shapes = [shape for shape in (DECODE_SHAPES if args.decode_shapes else SHAPES)
              if not args.only or shape[0] in args.only.split(",")]
    widths = [int(b) for b in args.bits.split(",")]
    plan = {(bits, n, k, m): candidates(m, n, k, bits, sms) if bits in widths else []
            for bits in (4, 8) for _, n, k in shapes for m in ms}
    precompile([(bits, c.__dict__) for (bits, *_), cs in plan.items() for c in cs], args.workers)
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s", flush=True)
    rows, sweeps = [], []
    for name, n, k in shapes:
        gens = [torch.Generator(device="cuda").manual_seed(60 + i) for i in range(SETS)]
        codes = [torch.randint(-8, 8, (n, k), generator=g, device="cuda", dtype=torch.int8) for g in gens]
        codes8 = [torch.randint(-127, 128, (n, k), generator=g, device="cuda", dtype=torch.int8) for g in gens]
        scales = [(torch.rand(n, k // GROUP, generator=g, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
                  for g in gens]
        channel = [(torch.rand(n, 1, generator=g, device="cuda") * 2e-3 + 2e-4).to(torch.bfloat16) for g in gens]
        cols = torch.arange(k, device="cuda") // GROUP
        dense = [(q.float() * s.float()[:, cols]).to(torch.bfloat16) for q, s in zip(codes, scales, strict=True)]
        dense8 = (codes8[0].float() * channel[0].float()).to(torch.bfloat16)
        words = [permute_nibbles(pack_int32(q, 4)) for q in codes]
        int4 = [torch_int4(q, s, None) for q, s in zip(codes, scales, strict=True)]
        for m in ms:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, dense[0])
            ref8 = torch.nn.functional.linear(x, dense8)
            bf16_us = graph_us([functools.partial(torch.nn.functional.linear, x, d) for d in dense], quick=True)
            int4_us = graph_us([functools.partial(torch.ops.aten._weight_int4pack_mm, x, w, GROUP, sz)
                                for w, sz in int4], quick=True)
            old = w4a16.plan(m, n, k, GROUP, torch.bfloat16, sms, props.name)  # the op's register kernels
            prev = [functools.partial(w4a16.w4a16_linear, x, w, s, None, GROUP, config=old, permuted=True)
                    for w, s in zip(words, scales, strict=True)]
            prev_us = graph_us(prev, quick=True)
            w8_ref_us = graph_us([functools.partial(dequant_linear, x, q, s, None, -1)
                                  for q, s in zip(codes8, channel, strict=True)], quick=True)
            w4 = sweep(functools.partial(_calls, x, words, scales, 4), plan[(4, n, k, m)], ref)
            w8 = sweep(functools.partial(_calls, x, codes8, channel, 8), plan[(8, n, k, m)], ref8)
            sweeps.append({"shape": name, "n": n, "k": k, "m": m, "w4": w4, "w8": w8})
            w4_ok = [t for t in w4 if t["err"] < 1e-2]
            w8_ok = [t for t in w8 if t["err"] < 1e-2]
            if (4 in widths and not w4_ok) or (8 in widths and not w8_ok):
                print(f"{name} M={m}: no correct config (w4 {w4[:2]}, w8 {w8[:2]})", flush=True)
                continue
            unswept = {"cfg": {}, "us": float("nan"), "err": float("nan")}
            b4, b8 = (w4_ok or [unswept])[0], (w8_ok or [unswept])[0]
            act = m * k * 2 + m * n * 2
            rows.append({
                "shape": f"{n}x{k} {name}", "M": m, "bf16_us": bf16_us, "torch_int4_us": int4_us,
                "w4_prev_us": prev_us, "w4_tma_dot_us": b4["us"], "x_bf16": bf16_us / b4["us"],
                "w4_floor_us": (n * k / 2 + n * (k // GROUP) * 2 + act) / (bw * 1e6),
                "w8_dequant_cublas_us": w8_ref_us, "w8_tma_dot_us": b8["us"], "x_bf16_w8": bf16_us / b8["us"],
                "w8_floor_us": (n * k + n * 2 + act) / (bw * 1e6),
                "w4_err": b4["err"], "w8_err": b8["err"],
                "w4_plan": _short(b4["cfg"]), "w8_plan": _short(b8["cfg"]), "w4_prev_plan": old.kernel,
            })
            print(f"{name:8s} M={m:3d} bf16 {bf16_us:5.1f} int4mm {int4_us:6.1f} prev {prev_us:5.1f} "
                  f"w4 {b4['us']:5.1f} ({bf16_us / b4['us']:.2f}x) {_short(b4['cfg'])} | w8 ref {w8_ref_us:5.1f} "
                  f"tma {b8['us']:5.1f} ({bf16_us / b8['us']:.2f}x) {_short(b8['cfg'])}", flush=True)
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "w4_prev_us", "w4_tma_dot_us", "x_bf16", "w4_floor_us",
               "w8_dequant_cublas_us", "w8_tma_dot_us", "x_bf16_w8", "w8_floor_us", "w4_err", "w8_err", "w4_plan",
               "w8_plan", "w4_prev_plan"]
    meta = {**environment(), "triton": triton.__version__, "sm_count": sms, "copy_bandwidth_tbps": round(bw, 3),
            "group_size": GROUP, "seconds": round(time.perf_counter() - started, 1), "sweep": sweeps}
    name = args.out_name or ("kernels_tma_dot_decode_shapes" if args.decode_shapes else "kernels_tma_dot")
    write_results(name, f"TMA tensor-core W4A16 / W8A16 on {props.name}: microseconds per call", columns, rows, meta,
                  "Best correct config per M from the sweep (plan: bn x bm, groups per step, split-K, stages, warps). "
                  "w4_prev: the W4A16 op's kernels for this M before this kernel (register GEMV / tl.dot, tuned "
                  "plan); w8_dequant_cublas: W8A16's reference path (dequantize to bf16, then cuBLAS). x_bf16 (W4) / "
                  "x_bf16_w8 = bf16 us / ours. Floors: each format's bytes (codes, bf16 scales, x, y) at the measured "
                  "copy bandwidth. Random symmetric weights: int4 with group-128 scales, int8 with per-channel scales.")
    if args.write_table:
        write_table(props.name, sweeps, rows)


def _short(cfg: dict) -> str:
    if not cfg:
        return ""
    return (f"bn{cfg['block_n']} bm{cfg['block_m']} ng{cfg['ng']} split{cfg['split']} s{cfg['stages']} "
            f"w{cfg['num_warps']}")


def write_table(device_name: str, sweeps: list[dict], rows: list[dict]) -> None:
    """Merge each sweep's best correct launch into the kernel's tuned table for this card. W4 below MIN_M only where
    it beat the op's decode GEMV (w4_prev_us of the same row)."""
    from accel_cuda.kernels import wxa16_tma_dot as td

    prev = {(row["shape"], row["M"]): row["w4_prev_us"] for row in rows}
    table = json.loads(td.TUNED_CONFIGS.read_text()) if td.TUNED_CONFIGS.exists() else {}
    card = table.setdefault(device_name, {})
    for sw in sweeps:
        for bits in (4, 8):
            ok = [t for t in sw[f"w{bits}"] if t["err"] < 1e-2]
            beats_gemv = ok and ok[0]["us"] < prev.get((f"{sw['n']}x{sw['k']} {sw['shape']}", sw["m"]), 0.0)
            if ok and (bits == 8 or sw["m"] >= td.MIN_M or beats_gemv):
                card.setdefault(f"w{bits}:{sw['n']}x{sw['k']}", {})[str(sw["m"])] = ok[0]["cfg"]
    Path(td.TUNED_CONFIGS).write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")
    print(f"wrote tuned configs to {td.TUNED_CONFIGS}")


if __name__ == "__main__":
    main()
