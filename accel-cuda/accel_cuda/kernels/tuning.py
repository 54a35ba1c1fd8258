"""Tuned launch tables: JSON beside each kernel, {card name: {"NxKgG": {"M": launch fields}}}, written by the bench
scripts' --write-table from measured sweeps and read once per process (Triton-free). A card with no rows for a shape
borrows a sibling card's (the same die, SM count and shared memory per SM), so its launches are valid there."""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["OP_TABLES", "SIBLINGS", "card_rows", "launch_note", "tuned_table"]

Table = dict[str, dict[str, dict[str, dict[str, object]]]]
Rows = dict[str, dict[str, object]]

# Hopper cards on the GH100 die with 132 SMs and 228 KB of shared memory per SM: a tile, stage count and split-K tuned
# on one fits and tiles the same on the others (only the memory clock and capacity differ), so a launch measured on
# one is the best guess on a sibling that has none of its own (KERNEL_NOTES.md, session 15: H200 rows on an H100).
SIBLINGS: tuple[tuple[str, ...], ...] = (
    ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA H800", "NVIDIA GH200 480GB"),
)


@functools.cache
def tuned_table(path: Path) -> Table:
    """The table at `path`, or empty when no run has written one; a file that is not a table is an error naming
    it and the fix."""
    try:
        table = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"tuned launch table {path}: not JSON ({exc}); restore it from the package, or rewrite it "
                         "with the bench script's --write-table (bench/README.md)") from exc
    if not isinstance(table, dict) or not all(isinstance(rows, dict) for rows in table.values()):
        raise ValueError(f"tuned launch table {path}: expected {{card name: {{shape: {{M: launch}}}}}}; restore it "
                         "from the package, or rewrite it with the bench script's --write-table (bench/README.md)")
    return table


def card_rows(table: Table, device_name: str, shape: str) -> Rows | None:
    """The {M: launch} rows tuned for `shape` on this card; else a sibling card's rows (SIBLINGS order); None when
    neither has any, so the kernel falls back to its untuned default."""
    rows = table.get(device_name, {}).get(shape)
    if rows is not None:
        return rows
    for family in SIBLINGS:
        if device_name in family:
            for sibling in family:
                rows = table.get(sibling, {}).get(shape)
                if rows is not None:
                    return rows
    return None


# The tables each op's kernels plan their launches from (the rest of the ops take no tuned launch).
OP_TABLES: dict[str, tuple[str, ...]] = {
    "w4a16_linear": ("w4a16_gemv_tma_configs.json", "wxa16_tma_dot_configs.json", "w4a16_configs.json",
                     "w4a16_gemv_configs.json"),
    "w4a16_sparse24_linear": ("w4a16_sparse24_tma_configs.json", "w4a16_sparse24_configs.json"),
    "dequant_linear": ("wxa16_tma_dot_configs.json",),
    "w8a8_int8_linear": ("w8a8_tma_configs.json",),
    "fp8_linear": ("w8a8_tma_configs.json",),
    "w8a8_scaled_mm": ("w8a8_tma_configs.json",),
}
for _fold in ("w4a16_linear_residual", "w4a16_linear_rms", "w4a16_linear_silu_mul", "w4a16_linear_rope_kv"):
    OP_TABLES[_fold] = ("w4a16_gemv_tma_configs.json",)  # the folds run only on a tuned TMA GEMV launch


def launch_note(op: str, device_name: str, directory: Path = Path(__file__).parent) -> str:
    """What a plan should say about `op`'s launches on this card: "" where they were tuned on it (or the op takes
    none), the sibling card they are borrowed from, or that the kernels run untuned defaults and how to tune."""
    tables = [tuned_table(directory / name) for name in OP_TABLES.get(op, ())]
    if not tables or any(table.get(device_name) for table in tables):
        return ""
    family = next((family for family in SIBLINGS if device_name in family), ())
    lender = next((card for card in family for table in tables if card != device_name and table.get(card)), None)
    if lender is not None:
        return (f"launches tuned on the {lender}, borrowed: no rows for the {device_name}, which shares its die, SM "
                "count and shared memory")
    folds = ", and no fused-GEMV folds" if "w4a16_gemv_tma_configs.json" in OP_TABLES[op] else ""
    return (f"no launch tuned for the {device_name}: untuned default launches{folds} (tune with the bench scripts' "
            "--write-table, bench/README.md)")
