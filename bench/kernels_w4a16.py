"""W4A16 linear kernels on one GPU: bf16 cuBLAS vs torch's int4 kernel vs accel-cuda's Triton kernel.

Llama-3-8B MLP shapes with random weights (N x K = out x in): 14336 x 4096 (up/gate) and 4096 x 14336 (down),
4-bit, group 128, M (tokens) from 1 to 128. Times are triton.testing.do_bench medians after warm-up, L2 flushed
before every run (do_bench's default), in microseconds; speed-ups are over bf16 torch.nn.functional.linear on
the same card in the same run.

    python bench/kernels_w4a16.py            # the table -> bench/results/kernels_w4a16.json / .md
    python bench/kernels_w4a16.py --sweep F  # also time candidate launch configs per M, JSON to F
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time

import torch
import triton
from common import environment, write_results
from triton.testing import do_bench

from accel.runtime.packing import pack_int32

SHAPES = [("up/gate", 14336, 4096), ("down", 4096, 14336)]
MS = [1, 2, 4, 8, 16, 32, 64, 128]
GROUP = 128


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


def bench(fn, quick: bool = False) -> float:
    """Median microseconds."""
    ms = do_bench(fn, warmup=5, rep=20, return_mode="median") if quick else do_bench(fn, return_mode="median")
    return ms * 1e3


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (TB/s), 1 GiB each way."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    us = bench(lambda: dst.copy_(src))
    return 2 * src.numel() / (us * 1e-6) / 1e12


def floor_us(n: int, k: int, m: int, bw_tbps: float, zp: bool) -> float:
    groups = math.ceil(k / GROUP)
    nbytes = n * k / 2 + n * groups * 2 + (n * groups if zp else 0) + m * k * 2 + m * n * 2
    return nbytes / (bw_tbps * 1e12) * 1e6


def sweep_configs(m: int, n: int, k: int, sms: int):
    from accel_cuda.kernels.w4a16 import Config

    cands = []
    if m <= 8:
        bm = 1 << (m - 1).bit_length()
        for bn, prefetch, split in itertools.product((16, 32, 64), (True, False), (1, 2, 4, 8)):
            if bm >= 4 and bn == 64:
                continue
            if math.ceil(n / bn) * split > 24 * sms:
                continue
            cands.append(Config("gemv", block_m=bm, block_n=bn, split=split, prefetch=prefetch,
                                num_stages=1 if prefetch else 3))
    bm = min(128, max(16, 1 << (m - 1).bit_length()))
    for bn, stages, split in itertools.product((64, 128), (3, 4), (1, 2, 4, 8)):
        if math.ceil(n / bn) * math.ceil(m / bm) * split > 16 * sms:
            continue
        warps = 8 if bn * bm >= 128 * 64 else 4
        cands.append(Config("dot", block_m=bm, block_n=bn, split=split, num_warps=warps, num_stages=stages))
    return cands


def run_sweep(path: str, sms: int) -> None:
    from accel_cuda.kernels.w4a16 import Config, w4a16_linear

    results = []
    for (name, n, k), symmetric in itertools.product(SHAPES, (True,)):
        _, packed, scale, zp, dense = make_weights(n, k, symmetric, seed=1)
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, dense)
            timings = []
            for cfg in [*sweep_configs(m, n, k, sms), Config("dequant", block_n=32)]:
                fn = functools.partial(w4a16_linear, x, packed, scale, zp, GROUP, config=cfg)
                try:
                    err = rel_err(fn(), ref)
                    us = bench(fn, quick=True)
                except Exception as exc:  # a config that fails to compile or launch is reported, not fatal
                    print(f"  {name} M={m} {cfg}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                timings.append({"cfg": cfg.__dict__, "us": us, "err": err})
            timings.sort(key=lambda t: t["us"])
            results.append({"shape": name, "n": n, "k": k, "m": m, "timings": timings})
            best = timings[:3]
            print(f"sweep {name:8s} M={m:4d} " + " | ".join(
                f"{t['us']:7.1f}us {t['cfg']['kernel']} bm{t['cfg']['block_m']} bn{t['cfg']['block_n']} "
                f"s{t['cfg']['split']} w{t['cfg']['num_warps']} st{t['cfg']['num_stages']} "
                f"pf{int(t['cfg']['prefetch'])} e{t['err']:.1e}" for t in best), flush=True)
            bad = [t for t in timings if not t["err"] < 1e-2]
            if bad:
                print(f"  WRONG: {len(bad)} configs with error >= 1e-2, e.g. {bad[0]}")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", metavar="JSON", help="also time candidate configs and write them here")
    parser.add_argument("--no-table", action="store_true", help="skip the main table")
    args = parser.parse_args()

    from accel_cuda.kernels.w4a16 import Config, plan, w4a16_linear

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    if args.sweep:
        run_sweep(args.sweep, sms)
    if args.no_table:
        return
    started = time.perf_counter()
    bw = copy_bandwidth()
    print(f"{props.name}: {sms} SMs, copy bandwidth {bw:.2f} TB/s (read + write)")
    rows = []
    for name, n, k in SHAPES:
        q, packed, scale, _, dense = make_weights(n, k, True, seed=2)
        _, packed_a, scale_a, zp_a, dense_a = make_weights(n, k, False, seed=3)
        try:
            int4_w, int4_sz = torch_int4(q, scale, None)
            int4_error = None
        except Exception as exc:
            int4_w = None
            int4_error = f"{type(exc).__name__}: {exc}"
            print(f"torch int4 packing failed on this card: {int4_error}")
        for m in MS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = torch.nn.functional.linear(x, dense)
            ref_a = torch.nn.functional.linear(x, dense_a)
            cfg = plan(m, n, k, GROUP, torch.bfloat16, sms)
            row = {"shape": f"{n}x{k} {name}", "M": m}
            row["bf16_us"] = bench(functools.partial(torch.nn.functional.linear, x, dense))
            if int4_w is not None:
                fn4 = functools.partial(torch.ops.aten._weight_int4pack_mm, x, int4_w, GROUP, int4_sz)
                try:
                    row["int4mm_err"] = rel_err(fn4(), ref)
                    row["torch_int4_us"] = bench(fn4)
                except Exception as exc:
                    int4_error = f"{type(exc).__name__}: {exc}"
                    print(f"torch int4 mm failed at M={m}: {int4_error}")
            ours = functools.partial(w4a16_linear, x, packed, scale, None, GROUP)
            ours_a = functools.partial(w4a16_linear, x, packed_a, scale_a, zp_a, GROUP)
            dq = functools.partial(w4a16_linear, x, packed, scale, None, GROUP, config=Config("dequant"))
            row["triton_err"] = rel_err(ours(), ref)
            row["triton_asym_err"] = rel_err(ours_a(), ref_a)
            row["dq_err"] = rel_err(dq(), ref)
            row["triton_us"] = bench(ours)
            row["triton_asym_us"] = bench(ours_a)
            row["dq_cublas_us"] = bench(dq)
            row["floor_us"] = floor_us(n, k, m, bw, False)
            row["x_bf16"] = row["bf16_us"] / row["triton_us"]
            row["x_bf16_asym"] = row["bf16_us"] / row["triton_asym_us"]
            if "torch_int4_us" in row:
                row["int4mm_x_bf16"] = row["bf16_us"] / row["torch_int4_us"]
            row["plan"] = f"{cfg.kernel} bm{cfg.block_m} bn{cfg.block_n} bk{cfg.block_k} split{cfg.split}"
            rows.append(row)
            print({key: (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}, flush=True)
    columns = ["shape", "M", "bf16_us", "torch_int4_us", "triton_us", "triton_asym_us", "dq_cublas_us", "floor_us",
               "x_bf16", "x_bf16_asym", "int4mm_x_bf16", "plan"]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": sms,
        "copy_bandwidth_tbps": round(bw, 3),
        "group_size": GROUP,
        "weights": "random codes, bf16 scales; symmetric unless 'asym' (int8 zero points)",
        "timing": "triton.testing.do_bench median, L2 flushed before each run",
        "torch_int4": int4_error or "torch.ops.aten._weight_int4pack_mm (tinygemm), innerKTiles 8",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "N x K is out x in. floor_us: bytes of int4 weights + bf16 scales + x + y over the measured copy "
        "bandwidth. x_bf16: bf16 time / Triton time (symmetric); x_bf16_asym the same with zero points. "
        "dq_cublas_us: the Triton dequantize kernel then cuBLAS bf16. plan: the launch the kernel picked."
    )
    write_results("kernels_w4a16", f"W4A16 linear on {props.name}: microseconds and speed-up over bf16", columns,
                  rows, meta, notes)


if __name__ == "__main__":
    main()
