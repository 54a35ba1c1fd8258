"""Shared by every benchmark: where it ran, and writing a results table as JSON + Markdown (and printing it)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

# Where results go: bench/results, or ACCEL_BENCH_RESULTS (CI writes fresh CPU results to a temporary folder and
# gates them, leaving the committed ones alone).
RESULTS = Path(os.environ.get("ACCEL_BENCH_RESULTS") or Path(__file__).parent / "results")


def environment() -> dict[str, Any]:
    """The machine, card and versions a result belongs to."""
    from accel.runtime.cpu import cpu_capability

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else cpu_capability().device_name
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "" if value is None else str(value)


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    name: str, title: str, columns: list[str], rows: list[dict[str, Any]], meta: dict[str, Any], notes: str = "",
    price_per_gpu_hour: float | None = None,
) -> Path:
    """Print the table and write bench/results/<name>.json and .md atomically; returns the JSON path.

    Both carry the standard serving metrics of every row (accel.integration.metrics.metrics_block: throughput,
    TTFT, TPOT, memory, cost per million tokens when a GPU-hour price is given here or in
    ACCEL_PRICE_PER_GPU_HOUR, quality delta, acceptance and fallbacks), named alike in every results file."""
    from accel.integration.metrics import metrics_block, metrics_markdown
    from accel.schema.io import atomic_write_text

    table = markdown_table(columns, rows)
    print(f"\n{title}\n\n{table}\n")
    metrics = metrics_block(rows, price_per_gpu_hour)
    data = {"title": title, "meta": meta, "columns": columns, "rows": rows, "notes": notes, "metrics": metrics}
    json_path = RESULTS / f"{name}.json"
    atomic_write_text(json_path, json.dumps(data, indent=2, default=str) + "\n")
    meta_lines = "\n".join(f"- {k}: {v}" for k, v in meta.items() if not isinstance(v, dict | list))
    atomic_write_text(RESULTS / f"{name}.md",
                      f"# {title}\n\n{meta_lines}\n\n{table}\n\n{notes}\n\n{metrics_markdown(metrics)}\n")
    return json_path
