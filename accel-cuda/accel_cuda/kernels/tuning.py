"""Tuned launch tables: JSON beside each kernel, {card name: {"NxKgG": {"M": launch fields}}}, written by the bench
scripts' --write-table from measured sweeps and read once per process (Triton-free). A card with no rows for a shape
borrows a sibling card's (the same die, SM count and shared memory per SM), so its launches are valid there."""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["SIBLINGS", "card_rows", "tuned_table"]

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
    """The table at `path`, or empty when no run has written one."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


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
