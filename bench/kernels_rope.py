"""RoPE on one GPU: core's reference torch chain vs accel-cuda's fused Triton kernel (q and k in one launch).

The reference (rope_ops.rotary_embedding: x * cos + rotate_half(x) * sin for q and for k, i.e. neg, cat, 2 mul and
add each) runs ~10 small kernels per layer; the fused kernel one launch. A Llama-3-8B forward rotates once per layer
(32 times).

Llama-3-8B shapes: 32 query heads and 8 KV heads of 128, bf16; q and k as the model makes them, strided views of the
fused qkv projection output [B, T, 6144]. Decode at batch 1, 16 and 64 (one token a row, tables [B, 1, 128] gathered at
each row's position) and a 2k-token prefill (batch 1, one table [1, 2048, 128]).

Timing: CALLS rotations per CUDA graph cycling over LAYERS (q, k, cos, sin) sets, do_bench median of the replays,
microseconds per rotation (gpu_timing.graph_us): device time, as in a captured decode step. eager_us: CALLS rotations
issued eagerly and synchronized, per rotation, i.e. host launch time where it bounds (a prefill is not captured).
forward_ms: the graph time saved per forward of 32 layers, (ref_us - fused_us) * 32 / 1e3. differ: the fraction of
output elements (q and k) that differ from the reference: 0 expected, the kernel rounds as torch does.

    python bench/kernels_rope.py            # the table -> bench/results/kernels_rope.json / .md
    python bench/kernels_rope.py --quick    # shorter timing (5 ms warm-up, 30 ms of replays)
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

import torch
import triton
from common import environment, write_results
from gpu_timing import fused_vs_reference

from accel.runtime.rope_ops import rotary_embedding

HEADS, KV_HEADS, HEAD_DIM, THETA = 32, 8, 128, 500000.0
CASES = [("decode", 1, 1), ("decode", 16, 1), ("decode", 64, 1), ("prefill", 1, 2048)]  # (phase, batch, tokens)
LAYERS_PER_FORWARD = 32  # Llama-3-8B: one rotation of q and k per layer
LAYERS = 4  # (q, k, cos, sin) sets the timed calls cycle over
CALLS = 32
MAX_POSITION = 8192

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def make_inputs(phase: str, batch: int, tokens: int, seed: int) -> Inputs:
    """q [B, T, 32, 128] and k [B, T, 8, 128] bf16, views of one qkv output; cos / sin of RoPE angles, [B, 1, 128] at a
    random position per row (decode) or [1, T, 128] at 0 .. T - 1 (prefill)."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    width = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    qkv = (torch.randn(batch, tokens, width, generator=gen, device="cuda") * 3).bfloat16()
    q, k, _ = qkv.split((HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM), dim=-1)
    if phase == "decode":
        positions = torch.randint(0, MAX_POSITION, (batch, 1), generator=gen, device="cuda")
    else:
        positions = torch.arange(tokens, device="cuda")[None]
    inv_freq = THETA ** -(torch.arange(0, HEAD_DIM, 2, device="cuda").float() / HEAD_DIM)
    half = positions[..., None].float() * inv_freq
    angle = torch.cat((half, half), dim=-1)
    cos, sin = angle.cos().bfloat16(), angle.sin().bfloat16()
    return q.view(batch, tokens, HEADS, HEAD_DIM), k.view(batch, tokens, KV_HEADS, HEAD_DIM), cos, sin


def agreement(phase: str, batch: int, tokens: int, kernel: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The fraction of output elements (q and k) differing from the reference on one call."""
    args = make_inputs(phase, batch, tokens, seed=99)
    got, want = kernel(*args), rotary_embedding(*args)
    differing = sum(int((g != w).sum()) for g, w in zip(got, want, strict=True))
    return differing / sum(w.numel() for w in want)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing (5 ms warm-up, 30 ms of replays)")
    args = parser.parse_args()

    from accel_cuda.kernels.rope import plan
    from accel_cuda.kernels.rope import rotary_embedding as kernel

    torch.manual_seed(0)
    props = torch.cuda.get_device_properties(0)
    print(f"{props.name}: {props.multi_processor_count} SMs", flush=True)
    started = time.perf_counter()
    rows_out = []
    for phase, batch, tokens in CASES:
        sets = [make_inputs(phase, batch, tokens, seed=batch * tokens + i) for i in range(LAYERS)]
        ref = [functools.partial(rotary_embedding, *inputs) for inputs in sets]
        ours = [functools.partial(kernel, *inputs) for inputs in sets]
        timed = fused_vs_reference(ref, ours, CALLS, args.quick)
        table_rows = batch if phase == "decode" else 1
        # bf16 q and k read and written, cos and sin read
        moved = 2 * batch * tokens * (HEADS + KV_HEADS) * HEAD_DIM * 2 + 2 * table_rows * tokens * HEAD_DIM * 2
        cfg = plan(HEADS, HEAD_DIM)
        row = {
            "phase": phase,
            "batch": batch,
            "tokens": tokens,
            **timed,
            "forward_ms": (timed["ref_us"] - timed["fused_us"]) * LAYERS_PER_FORWARD / 1e3,
            "fused_GBps": moved / (timed["fused_us"] * 1e-6) / 1e9,
            "differ": agreement(phase, batch, tokens, kernel),
            "plan": f"bh{cfg.block_h} w{cfg.num_warps}",
        }
        rows_out.append(row)
        print({key: (round(val, 4) if isinstance(val, float) else val) for key, val in row.items()}, flush=True)
        del sets, ref, ours
    columns = [
        "phase",
        "batch",
        "tokens",
        "ref_us",
        "fused_us",
        "x_graph",
        "ref_eager_us",
        "fused_eager_us",
        "x_eager",
        "forward_ms",
        "fused_GBps",
        "differ",
        "plan",
    ]
    meta = {
        **environment(),
        "triton": triton.__version__,
        "sm_count": props.multi_processor_count,
        "shape": f"{HEADS} query heads, {KV_HEADS} KV heads of {HEAD_DIM}, bf16, q / k strided views of the fused qkv",
        "timing": f"CUDA graph of {CALLS} rotations over {LAYERS} (q, k, cos, sin) sets, do_bench median, per call",
        "seconds": round(time.perf_counter() - started, 1),
    }
    notes = (
        "ref_us: core's reference rotary_embedding (the ~10-kernel torch chain for q and k) in a CUDA graph; "
        "fused_us: accel-cuda's Triton kernel, one launch for q and k. *_eager_us: the same rotations issued eagerly "
        f"(host launch time included). forward_ms: graph time saved per forward of {LAYERS_PER_FORWARD} layers "
        "(Llama-3-8B). fused_GBps: q and k read and written, cos and sin read, over fused_us. differ: output elements "
        "that differ from the reference (0: bit-exact)."
    )
    write_results(
        "kernels_rope",
        f"RoPE (H {HEADS}, Hkv {KV_HEADS}, D {HEAD_DIM}) on {props.name}: reference torch chain vs fused kernel, "
        "microseconds",
        columns,
        rows_out,
        meta,
        notes,
    )


if __name__ == "__main__":
    main()
