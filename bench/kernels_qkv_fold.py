"""RoPE and the 16-bit KV cache write folded into the q/k/v W4A16 decode GEMV, against the two launches it replaces.

Llama-3-8B's q/k/v (32 q heads, 8 KV heads of 128: 6144 x 4096) at batch 1, after the folded input norm as a decode
step runs it (and, a second row, on a plain x, as where the norms do not fold). Unfused: w4a16_linear_rms (the GEMV,
with the norm's scale; w4a16_linear on a plain x), then rotary_kv_cache_write (rope_kv_write.py:
q and k rotated, k and v stored at the token's position). Folded: w4a16_linear_rope_kv (the rotation and the stores in
the GEMV's epilogue; accel.runtime.qkv_fold_ops). Random symmetric int4 weights, group 128, bf16, a bf16 cache of
256 positions; the pieces alone the same way.

Timing: CALLS calls per CUDA graph cycling over LAYERS weight sets and caches (so no weight stays in L2), do_bench
median, us per call (gpu_timing.graph_us). err_*: relative error of the returned q and of the stored k and v against
float64 (the linear, the norm's scale and the rotation computed in float64 from the same bf16 inputs). bitwise: whether
the folded q and cache equal the unfused ones bit for bit.

    python bench/kernels_qkv_fold.py [--quick]     # -> bench/results/kernels_qkv_fold.json / .md
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import triton
from common import environment, write_results
from gpu_timing import graph_us

from accel.runtime.kv_cache import StaticKVCache
from accel.runtime.ops import w4a16_weight
from accel.runtime.packing import pack_int32

HEADS, KV_HEADS, HEAD_DIM, HIDDEN = 32, 8, 128, 4096
SEQ = 256
EPS = 1e-5
LAYERS = 4
CALLS = 16


def layer_set(gen: torch.Generator, position: int) -> dict[str, object]:
    """One layer's prepared q/k/v weights (and the artifact's for float64), x = h * w with h's partial sums, the RoPE
    tables at `position`, and a bf16 cache."""
    from accel_cuda.kernels import w4a16_prepare

    n = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    q = torch.randint(-8, 8, (n, HIDDEN), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, HIDDEN // 128, generator=gen, device="cuda") * 0.02 + 0.002).bfloat16()
    packed = pack_int32(q, 4)
    args, kwargs = w4a16_prepare(packed, scale, None, 128)
    x = torch.randn(1, 1, HIDDEN, generator=gen, device="cuda").bfloat16()
    sums = (x.float().pow(2).reshape(1, 1, 256, -1).sum(-1) * 1.7).contiguous()  # 256 partial sums as o / down leave
    positions = torch.full((1, 1), position, device="cuda", dtype=torch.int64)
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, HEAD_DIM, 2, device="cuda", dtype=torch.float64) / HEAD_DIM)
    angle = positions.double()[..., None] * inv_freq
    angle = torch.cat((angle, angle), -1)
    cache = StaticKVCache(1, 1, KV_HEADS, SEQ, HEAD_DIM, kv_format="none", dtype=torch.bfloat16, device="cuda")
    return {"weights": args, "kwargs": kwargs, "raw": (packed, scale), "x": x, "sums": sums, "ss": sums,
            "positions": positions, "cos": angle.cos().bfloat16(), "sin": angle.sin().bfloat16(), "cache": cache}


def unfused(s: dict, linear_only: bool = False) -> torch.Tensor:
    from accel_cuda.kernels import w4a16_linear, w4a16_linear_rms

    if s["ss"] is None:
        y = w4a16_linear(s["x"], *s["weights"], **s["kwargs"])
    else:
        y = w4a16_linear_rms(s["x"], *s["weights"], s["ss"], EPS, **s["kwargs"])
    return y if linear_only else rope_alone(s, y)


def rope_alone(s: dict, y: torch.Tensor) -> torch.Tensor:
    """rope_kv_write.py on the linear's output y: q rotated, k rotated and v stored into the layer set's cache."""
    from accel_cuda.kernels import rotary_kv_cache_write

    d = HEAD_DIM
    q, k, v = y.split([HEADS * d, KV_HEADS * d, KV_HEADS * d], -1)
    return rotary_kv_cache_write(q.view(1, 1, HEADS, d), k.view(1, 1, KV_HEADS, d), v.view(1, 1, KV_HEADS, d),
                                 s["cos"], s["sin"], s["positions"], *s["cache"].layer_stores(0), "none")


def folded(s: dict) -> torch.Tensor:
    from accel_cuda.kernels import w4a16_linear_rope_kv

    return w4a16_linear_rope_kv(s["x"], *s["weights"], s["ss"], EPS, s["cos"], s["sin"], s["positions"],
                                *s["cache"].layer_stores(0), "none", HEADS, **s["kwargs"])


def errors(s: dict, q: torch.Tensor) -> tuple[float, float, float]:
    """Relative errors of q, the stored k and the stored v against float64."""
    packed, scale = s["raw"]
    d = HEAD_DIM
    y = s["x"].double() @ w4a16_weight(HIDDEN, packed, scale, None, 128).double().T
    if s["ss"] is not None:
        y = y * torch.rsqrt(s["ss"].double().sum(-1, keepdim=True) / HIDDEN + EPS)
    qy, ky, vy = y.split([HEADS * d, KV_HEADS * d, KV_HEADS * d], -1)
    cos, sin = s["cos"].double()[:, :, None], s["sin"].double()[:, :, None]

    def rotate(t: torch.Tensor) -> torch.Tensor:
        return t * cos + torch.cat((-t[..., d // 2:], t[..., : d // 2]), -1) * sin

    pos = int(s["positions"][0, 0])
    keys, values = s["cache"].keys[0].codes[0, :, pos], s["cache"].values[0].codes[0, :, pos]

    def rel(got: torch.Tensor, want: torch.Tensor) -> float:
        return float((got.double() - want).norm() / want.norm())

    return (rel(q, rotate(qy.view(1, 1, HEADS, d))), rel(keys, rotate(ky.view(1, 1, KV_HEADS, d))[0, 0]),
            rel(values, vy.view(KV_HEADS, d)))


def measure(sets: list[dict], rms: bool, quick: bool) -> dict[str, object]:
    """One row: the pair unfused and folded, each launch alone, errors against float64, bit-equality."""
    from accel_cuda.kernels.norm_fold import fold_plan

    for s in sets:
        s["ss"] = s["sums"] if rms else None
    ys = [unfused(s, linear_only=True) for s in sets]

    def timed(fn) -> float:
        return graph_us([functools.partial(fn, s) for s in sets], CALLS, quick)

    s0 = sets[0]
    q_unfused = unfused(s0)
    k_unfused = s0["cache"].keys[0].codes.clone()
    v_unfused = s0["cache"].values[0].codes.clone()
    err_unfused = errors(s0, q_unfused)
    q_folded = folded(s0)
    err_folded = errors(s0, q_folded)
    bitwise = (torch.equal(q_folded, q_unfused) and torch.equal(s0["cache"].keys[0].codes, k_unfused)
               and torch.equal(s0["cache"].values[0].codes, v_unfused))
    plan = fold_plan(s0["x"], *s0["weights"], permuted=True)
    row: dict[str, object] = {
        "case": f"q/k/v {(HEADS + 2 * KV_HEADS) * HEAD_DIM}x{HIDDEN}, batch 1, " + ("after a folded norm" if rms
                                                                                  else "plain x"),
        "unfused_us": timed(unfused),
        "folded_us": timed(folded),
        "linear_us": timed(functools.partial(unfused, linear_only=True)),
        "rope_kv_write_us": graph_us([functools.partial(rope_alone, s, y) for s, y in zip(sets, ys, strict=True)],
                                     CALLS, quick),
        "err_q_unfused": err_unfused[0],
        "err_q_folded": err_folded[0],
        "err_k_folded": err_folded[1],
        "err_v_folded": err_folded[2],
        "bitwise": bitwise,
        "plan": "fallback" if plan is None else f"bn{plan.block_n} ng{plan.ng} split{plan.split} s{plan.stages}",
    }
    row["saved_us"] = float(row["unfused_us"]) - float(row["folded_us"])  # type: ignore[arg-type]
    row["speedup"] = float(row["unfused_us"]) / float(row["folded_us"])  # type: ignore[arg-type]
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    gen = torch.Generator(device="cuda").manual_seed(0)
    sets = [layer_set(gen, 130 + i) for i in range(LAYERS)]
    rows = [measure(sets, rms, args.quick) for rms in (True, False)]
    columns = ["case", "unfused_us", "folded_us", "saved_us", "speedup", "linear_us", "rope_kv_write_us",
               "err_q_unfused", "err_q_folded", "err_k_folded", "err_v_folded", "bitwise", "plan"]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "timing": f"CUDA graph of {CALLS} calls over {LAYERS} weight sets and caches, do_bench median, per call",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "unfused: w4a16_linear_rms (w4a16_linear on a plain x), then rotary_kv_cache_write (rope_kv_write.py); "
        "folded: w4a16_linear_rope_kv (the rotation and the bf16 cache stores in the TMA GEMV's epilogue). linear / "
        "rope_kv_write: each launch alone. "
        "speedup: unfused / folded. err: q, the stored k and v against float64; bitwise: the folded q and cache equal "
        "the unfused ones exactly. plan: the GEMV launch (each fused program takes block_n / 2 rows of a head's first "
        "half and the rows 64 below them). A batch-1 decode step runs 32 of these."
    )
    write_results("kernels_qkv_fold", f"RoPE + KV cache write folded into the q/k/v W4A16 GEMV on {props.name}, us "
                  "per call", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
