"""How far one card's tuned launches are from another card's best, measured on the other card: for every (kernel
table, shape, M) that has rows for both cards, the time the borrowed launch took in the target card's own sweep
(`kernels_tma.py`, `kernels_tma_dot.py`, `kernels_w8a8_tma.py` store every launch they timed) against the fastest
correct launch of that sweep. No GPU: reads stored results. This is what accel_cuda.kernels.tuning.SIBLINGS costs a
card that has no rows of its own.

    ACCEL_BENCH_RESULTS=bench/results/nvidia-h100 python bench/tables_across_cards.py \\
        --card "NVIDIA H100 80GB HBM3" --borrow "NVIDIA H200"
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from common import RESULTS, environment, write_results

KERNELS = Path(__file__).resolve().parents[1] / "accel-cuda" / "accel_cuda" / "kernels"
# err bounds for "correct": the 4-bit and W8A16 sweeps measure against the float64 product of the dequantized
# weights; W8A8's against the unquantized weights (its quantization error included).
SOURCES = [
    ("kernels_tma.json", "w4a16_gemv_tma_configs.json", "gemv", ("dense_tma",), 1e-2),
    ("kernels_tma_dot.json", "wxa16_tma_dot_configs.json", "tma_dot", ("w4", "w8"), 1e-2),
    ("kernels_tma_dot_decode_shapes.json", "wxa16_tma_dot_configs.json", "tma_dot", ("w4", "w8"), 1e-2),
    ("kernels_tma_dot_lm_head.json", "wxa16_tma_dot_configs.json", "tma_dot", ("w4",), 1e-2),
    ("kernels_w8a8_tma.json", "w8a8_tma_configs.json", "w8a8_tma", ("timings",), 5e-2),
    ("kernels_w8a8_tma_wide.json", "w8a8_tma_configs.json", "w8a8_tma", ("timings",), 5e-2),  # --wide: a superset
]


# Launch fields added after a table was written, with the value every older row meant.
DEFAULTS = {"pairs": True, "ku": 1}


def _same(a: dict, b: dict) -> bool:
    return {**DEFAULTS, **a} == {**DEFAULTS, **b}


def _key(kind: str, column: str, sweep: dict) -> str:
    if kind == "gemv":
        return f"{sweep['n']}x{sweep['k']}g128"
    if kind == "tma_dot":
        return f"{column}:{sweep['n']}x{sweep['k']}"
    return f"{sweep['fmt']}:{sweep['n']}x{sweep['k']}"


def compare(results: Path, card: str, borrow: str) -> list[dict]:
    """One row per (kernel, table key, M); a later source's sweep of the same key and M (a wider one) replaces an
    earlier's."""
    rows: dict[tuple[str, str, int], dict] = {}
    for name, table_file, kind, columns, tol in SOURCES:
        path = results / name
        if not path.exists():
            continue
        table = json.loads((KERNELS / table_file).read_text())
        for sweep in json.loads(path.read_text())["meta"]["sweep"]:
            for column in columns:
                key = _key(kind, column, sweep)
                own = table.get(card, {}).get(key, {}).get(str(sweep["m"]))
                lent = table.get(borrow, {}).get(key, {}).get(str(sweep["m"]))
                ok = [t for t in sweep.get(column) or [] if t["err"] < tol]
                if not own or not lent or not ok:
                    continue
                best = min(t["us"] for t in ok)
                lent_us = next((t["us"] for t in ok if _same(t["cfg"], lent)), float("nan"))
                fmt = f"{column} " if kind != "gemv" and column != "timings" else ""
                fmt = f"{sweep['fmt']} " if kind == "w8a8_tma" else fmt
                rows[(kind, key, sweep["m"])] = {
                    "kernel": kind, "shape": f"{fmt}{sweep['shape']} {sweep['n']}x{sweep['k']}", "M": sweep["m"],
                    "best_us": best, "borrowed_us": lent_us, "slower": lent_us / best - 1, "speedup": best / lent_us,
                    "same_launch": _same(own, lent),
                    "borrowed_plan": " ".join(f"{k}={v}" for k, v in lent.items() if k not in DEFAULTS)}
    return list(rows.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card", required=True, help="the card the sweeps ran on (results' device)")
    parser.add_argument("--borrow", required=True, help="the card whose tuned rows it would borrow")
    args = parser.parse_args()
    rows = compare(RESULTS, args.card, args.borrow)
    if not rows:
        raise SystemExit(f"no (table, shape, M) with rows for both {args.card!r} and {args.borrow!r} in {RESULTS}")
    slower = [r["slower"] for r in rows if r["slower"] == r["slower"]]
    meta = {**environment(), "card": args.card, "borrowed_from": args.borrow, "rows": len(rows),
            "same_launch": sum(r["same_launch"] for r in rows), "median_slower": statistics.median(slower),
            "max_slower": max(slower)}
    columns = ["kernel", "shape", "M", "best_us", "borrowed_us", "slower", "speedup", "same_launch", "borrowed_plan"]
    notes = ("best_us: the fastest correct launch of the card's own sweep (its tuned row); borrowed_us: the other "
             "card's tuned launch in the same sweep; slower = borrowed / best - 1, speedup = best / borrowed (1: the "
             "borrowed launch is this card's best). Times from the stored sweeps (no GPU in this script).")
    write_results("tables_across_cards", f"{args.borrow}'s tuned launches on the {args.card}, against its own best",
                  columns, rows, meta, notes=notes)


if __name__ == "__main__":
    main()
