"""Tuned launch tables: JSON beside each kernel, {card name: {"NxKgG": {"M": launch fields}}}, written by the bench
scripts' --write-table from measured sweeps and read once per process (Triton-free)."""

from __future__ import annotations

import functools
import json
from pathlib import Path

__all__ = ["tuned_table"]

Table = dict[str, dict[str, dict[str, dict[str, object]]]]


@functools.cache
def tuned_table(path: Path) -> Table:
    """The table at `path`, or empty when no run has written one."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
