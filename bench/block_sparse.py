"""Block-sparse linear on the CPU: accel's block_sparse_linear (kept blocks only) against torch's dense F.linear of
the same dense-with-zeros weight, per call, at kept-block fractions 100/75/50/25%.

    python bench/block_sparse.py [--ms 1,4,16] [--dtypes bfloat16,float32] [--repeats 15]

Llama-3-8B shapes (q/o 4096x4096, gate/up 14336x4096) and the bundled SmolLM2-135M's runtime shapes (q/o, stacked
gate|up, down), each with 16x16 (SparsityConfig's default), 32x32 and 64x64 blocks. Random weights; the kept blocks
are drawn uniformly (so block rows keep different counts, as pruning leaves them). Each figure is the median of
--repeats calls after a warm-up, the dense and sparse calls interleaved so that both see the same machine state;
x_<f> = dense time / sparse time at kept fraction f (> 1: skipping pays). Each sparse output is checked against the
dense one. accel.runtime.block_sparse's limits (MAX_KEPT_FRACTION, MIN_WEIGHTS, SPARSE_MAX_M) come from this table.
Writes bench/results/block_sparse.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import environment, write_results

from accel.runtime.ops import block_sparse_linear, block_values

SHAPES = [  # name, out_features N, in_features K
    ("llama3-8b q/o", 4096, 4096),
    ("llama3-8b gate/up", 14336, 4096),
    ("smollm2 q/o", 576, 576),
    ("smollm2 gate_up", 3072, 576),
    ("smollm2 down", 576, 1536),
]
BLOCKS = ((16, 16), (32, 32), (64, 64))
FRACTIONS = (1.0, 0.75, 0.5, 0.25)


def median_us(calls: dict[str, Callable[[], torch.Tensor]], repeats: int) -> dict[str, float]:
    """Median microseconds per call of each callable, called round-robin (one warm-up round first)."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(repeats + 1):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            if rep:
                times[name].append((time.perf_counter() - start) * 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def random_blocks(
    n: int, k: int, block: tuple[int, int], fraction: float, dtype: torch.dtype, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(blocks [nb, br, bc], block_index [nb, 2] row-major, dense-with-zeros W [N, K]) keeping `fraction` of the
    blocks, drawn uniformly."""
    grid_r, grid_c = -(-n // block[0]), -(-k // block[1])
    kept = torch.randperm(grid_r * grid_c, generator=gen)[: round(fraction * grid_r * grid_c)].sort().values
    block_index = torch.stack([kept // grid_c, kept % grid_c], dim=1).to(torch.int32)
    keep = torch.zeros(grid_r * grid_c, dtype=torch.bool)
    keep[kept] = True
    mask = (
        keep.view(grid_r, 1, grid_c, 1)
        .expand(grid_r, block[0], grid_c, block[1])
        .reshape(grid_r * block[0], grid_c * block[1])[:n, :k]
    )
    weight = torch.randn(n, k, generator=gen).mul_(0.02).masked_fill_(~mask, 0).to(dtype)
    return block_values(weight, block_index, block), block_index, weight


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ms", default="1,4,16", help="token counts M per call (decode batch, or verify width)")
    parser.add_argument("--dtypes", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    ms = [int(m) for m in args.ms.split(",")]
    gen = torch.Generator().manual_seed(0)
    rows = []
    for dtype in (getattr(torch, name) for name in args.dtypes.split(",")):
        for shape, n, k in SHAPES:
            for block in BLOCKS:
                layers = {f: random_blocks(n, k, block, f, dtype, gen) for f in FRACTIONS}
                for m in ms:
                    x = torch.randn(m, k, generator=gen).to(dtype)
                    dense_weight = layers[1.0][2]
                    calls = {"dense": lambda x=x, w=dense_weight: torch.nn.functional.linear(x, w)}
                    for f, (values, index, weight) in layers.items():
                        name = f"{round(f * 100)}"
                        calls[name] = lambda x=x, v=values, i=index, n=n: block_sparse_linear(x, v, i, n)
                        want = torch.nn.functional.linear(x.float(), weight.float())
                        err = float((calls[name]().float() - want).norm() / want.norm())
                        assert err < 1e-2, f"{shape} {block} M={m} kept {name}%: relative error {err:.1e}"
                    us = median_us(calls, args.repeats)
                    row = {
                        "dtype": str(dtype).removeprefix("torch."),
                        "shape": shape,
                        "N": n,
                        "K": k,
                        "block": f"{block[0]}x{block[1]}",
                        "M": m,
                        "dense_us": us["dense"],
                    }
                    for f in FRACTIONS:
                        row[f"us_{round(f * 100)}"] = us[f"{round(f * 100)}"]
                        row[f"x_{round(f * 100)}"] = us["dense"] / us[f"{round(f * 100)}"]
                    rows.append(row)
                    print(row, flush=True)
    columns = [
        "dtype",
        "shape",
        "block",
        "M",
        "dense_us",
        *(f"us_{round(f * 100)}" for f in FRACTIONS),
        *(f"x_{round(f * 100)}" for f in FRACTIONS),
    ]
    meta = {**environment(), "repeats": args.repeats, "fractions": list(FRACTIONS)}
    notes = (
        "us_<f>: block_sparse_linear per call keeping f% of the blocks; dense_us: F.linear of the whole weight; "
        "x_<f> = dense_us / us_<f> (> 1: skipping zero blocks pays). Medians over repeats, interleaved calls."
    )
    write_results("block_sparse", "Block-sparse linear vs dense on the CPU (per call)", columns, rows, meta, notes)


if __name__ == "__main__":
    main()
