"""The Hopper TMA W8A8 kernel (accel_cuda.kernels.w8a8_tma) without a GPU: planning, and int8 under Triton's
interpreter. Its GPU cases (float64 references, poisoned outputs, split-K, graph replay) are in test_cuda_w8a8.py
with the op's other paths. Needs Triton."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from accel_cuda.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")

HOPPER, AMPERE = (9, 0), (8, 0)


@pytest.mark.parametrize(
    ("n", "k", "split"),
    # weight tiles of 128 rows, split-K up to about one program per SM (132), dividing K's 128-wide steps
    [(14336, 4096, 2), (4096, 14336, 4), (6144, 4096, 2), (1024, 4096, 16)],
)
def test_plan_heuristic_tiles_and_fills_the_sms(n, k, split):
    from accel_cuda.kernels import w8a8_tma as wt

    for m in (1, 5, 16, 17, 64):
        cfg = wt.w8a8_tma_plan(m, n, k, True, "No such card", HOPPER, 132)
        assert cfg is not None and wt.supports_w8a8_tma(n, k, cfg), (m, n, k, cfg)
        assert cfg.block_m == max(16, 1 << (m - 1).bit_length()) and cfg.block_n == 128
        assert cfg.split == (split if m <= 16 else cfg.split) and cfg.num_warps == (8 if m > 32 else 4)
    assert wt.w8a8_tma_plan(16, 4096, 4096, False, "x", AMPERE, 108) is None  # Hopper only
    assert wt.w8a8_tma_plan(65, 4096, 4096, False, "x", HOPPER, 132) is None  # above MAX_M: the libraries
    assert wt.w8a8_tma_plan(16, 100, 4096, False, "x", HOPPER, 132) is None  # N does not tile
    assert wt.w8a8_tma_plan(16, 4096, 200, False, "x", HOPPER, 132) is None  # K not a multiple of 128


def test_plan_reads_the_tuned_table(monkeypatch):
    from accel_cuda.kernels import w8a8_tma as wt

    table = {"Card": {"fp8:1024x4096": {"16": {"block_n": 64, "block_m": 16, "split": 4, "stages": 8}}}}
    monkeypatch.setattr(wt, "_tuned", lambda: table)
    assert wt.w8a8_tma_plan(3, 1024, 4096, True, "Card", HOPPER, 132) == wt.W8TmaConfig(64, 16, 4, 8)
    assert wt.w8a8_tma_plan(3, 1024, 4096, False, "Card", HOPPER, 132).block_n == 128  # int8: not in the table
    assert wt.w8a8_tma_plan(17, 1024, 4096, True, "Card", HOPPER, 132).block_m == 32  # past the table's Ms


def test_every_tuned_launch_tiles_its_shape():
    from accel_cuda.kernels import w8a8_tma as wt

    if not wt.TUNED_CONFIGS.exists():
        pytest.skip("no tuned table committed")
    for card, shapes in json.loads(wt.TUNED_CONFIGS.read_text()).items():
        for key, per_m in shapes.items():
            n, k = (int(v) for v in key.split(":")[1].split("x"))
            for m, fields in per_m.items():
                cfg = wt.W8TmaConfig(**fields)
                assert wt.supports_w8a8_tma(n, k, cfg) and int(m) <= wt.MAX_M, f"{card} {key} M={m}: {cfg}"


INTERPRETED = textwrap.dedent(
    """
    import torch
    from accel.runtime.ops import w8a8_int8_linear
    from accel_cuda.kernels import w8a8

    w8a8.POISON = True
    gen = torch.Generator().manual_seed(0)
    for m, n, k, bm, bn, split, bias, bk in [(5, 128, 512, 16, 64, 2, True, 128), (17, 64, 256, 32, 64, 1, False, 128),
                                             (5, 128, 1024, 16, 64, 2, True, 256)]:  # bk 256: ku 2
        x = torch.randn(m, k, generator=gen)
        weight = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scale = torch.rand(n, 1, generator=gen) * 1e-2
        b = torch.randn(n, generator=gen) if bias else None
        config = w8a8.W8Config("tma", block_m=bm, block_n=bn, block_k=bk, split=split, num_stages=2)
        got = w8a8.w8a8_int8_linear(x, weight, scale, b, config=config).double()
        expected = w8a8_int8_linear(x, weight, scale, b).double()
        print(m, n, k, split, float((got - expected).norm() / expected.norm()))
    """
)


def test_int8_under_the_interpreter():
    """Indexing, the split-K last-program sum and the bias on split 0, in fp32 (the interpreter's fp8 rounding is
    not trustworthy: test_cuda_interpret.py)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    for line in lines:
        assert float(line.split()[-1]) < 1e-6, line
