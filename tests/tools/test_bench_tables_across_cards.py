"""bench/tables_across_cards.py on the committed H100 sweeps: every borrowed launch is timed no faster than the
sweep's best, a launch both cards tuned alike costs nothing, and a card pair with no shared rows is refused."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
H100 = ROOT / "bench" / "results" / "nvidia-h100"


def run(results: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCEL_BENCH_RESULTS": str(results)}
    return subprocess.run([sys.executable, str(ROOT / "bench" / "tables_across_cards.py"), *args], env=env,
                          capture_output=True, text=True, timeout=120)


def test_the_h200_rows_on_the_h100(tmp_path):
    for path in H100.glob("kernels_*.json"):
        shutil.copy(path, tmp_path)
    done = run(tmp_path, "--card", "NVIDIA H100 80GB HBM3", "--borrow", "NVIDIA H200")
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "tables_across_cards.json").read_text())
    rows = data["rows"]
    assert len(rows) >= 100 and {row["kernel"] for row in rows} == {"gemv", "tma_dot", "w8a8_tma"}
    for row in rows:
        assert row["borrowed_us"] >= row["best_us"] > 0, row
        if row["same_launch"]:
            assert row["slower"] == 0, row
    assert data["meta"]["max_slower"] == max(row["slower"] for row in rows)


def test_cards_without_shared_rows_are_refused(tmp_path):
    shutil.copy(H100 / "kernels_tma.json", tmp_path)
    done = run(tmp_path, "--card", "NVIDIA H100 80GB HBM3", "--borrow", "NVIDIA A100-SXM4-80GB")
    assert done.returncode != 0 and "no (table, shape, M) with rows for both" in done.stderr
