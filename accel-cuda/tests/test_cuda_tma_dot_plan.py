"""Planning for the TMA tensor-core kernel (wxa16_tma_dot.tma_dot_plan, supports_tma_dot) and the CUDA dequant_linear's
choice of path, on the CPU: what the op would run for a card, shape and M, and that the committed tuned table only holds
launches that tile their shapes. Skipped without Triton (the module imports it)."""

from __future__ import annotations

import json

import pytest
import torch
from accel_cuda.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton")

HOPPER, AMPERE = (9, 0), (8, 0)


def test_every_tuned_launch_tiles_its_shape():
    from accel_cuda.kernels import wxa16_tma_dot as td

    table = json.loads(td.TUNED_CONFIGS.read_text())
    assert table, "the tuned table is empty"
    for card, shapes in table.items():
        for key, per_m in shapes.items():
            bits, dims = key.split(":")
            n, k = (int(v) for v in dims.split("x"))
            for m, fields in per_m.items():
                cfg = td.TmaDotConfig(**fields)
                groups = k // 128 if bits == "w4" else 1
                assert td.supports_tma_dot(n, k, groups, cfg, int(bits[1])), f"{card} {key} M={m}: {cfg}"
                assert int(m) <= td.MAX_M


def test_plan_by_card_and_m(monkeypatch):
    from accel_cuda.kernels import wxa16_tma_dot as td

    table = {"Card": {"w4:1024x4096": {"2": {"block_n": 64, "block_m": 16, "ng": 1, "split": 2},
                                       "16": {"block_n": 128, "block_m": 16, "ng": 2, "split": 1}}}}
    monkeypatch.setattr(td, "_tuned", lambda: table)
    assert td.tma_dot_plan(16, 1024, 4096, 4, "Card", AMPERE, 108) is None  # Hopper only (TMA, wgmma)
    assert td.tma_dot_plan(129, 1024, 4096, 4, "Card", HOPPER, 132) is None  # above MAX_M: dequantize + cuBLAS
    assert td.tma_dot_plan(1, 1024, 4096, 4, "Card", HOPPER, 132) is None  # M=1: the decode GEMV
    assert td.tma_dot_plan(2, 1024, 4096, 4, "Card", HOPPER, 132).split == 2  # M=2 only where the sweep put it
    assert td.tma_dot_plan(2, 2048, 4096, 4, "Card", HOPPER, 132) is None
    assert td.tma_dot_plan(5, 1024, 4096, 4, "Card", HOPPER, 132).block_n == 128  # the smallest tuned M >= 5
    heuristic = td.tma_dot_plan(100, 2048, 4096, 4, "Card", HOPPER, 132)
    assert heuristic.block_m == 128 and td.supports_tma_dot(2048, 4096, 32, heuristic, 4)
    w8 = td.tma_dot_plan(1, 2048, 4096, 8, "Other card", HOPPER, 132)  # 8 bits has no decode GEMV: from M=1
    assert w8 is not None and w8.block_m == 16 and td.supports_tma_dot(2048, 4096, 1, w8, 8)


def test_the_racy_launch_is_never_planned(monkeypatch):
    """Triton 3.6's racy build (RACY) is refused by supports_tma_dot and skipped when an older table holds it: the
    plan falls to the next tuned M or the heuristic."""
    from accel_cuda.kernels import wxa16_tma_dot as td

    racy = dict(block_n=64, block_m=128, ng=1, split=1, stages=3, num_warps=4)
    assert not td.supports_tma_dot(14336, 4096, 32, td.TmaDotConfig(**racy), 4)
    assert td.supports_tma_dot(14336, 4096, 32, td.TmaDotConfig(**{**racy, "stages": 4}), 4)
    monkeypatch.setattr(td, "_tuned", lambda: {"Card": {"w4:14336x4096": {"128": racy}}})
    plan = td.tma_dot_plan(128, 14336, 4096, 4, "Card", HOPPER, 132)
    assert plan is not None and (plan.block_n, plan.block_m, plan.stages, plan.num_warps) == (128, 128, 4, 8)


def test_heuristic_split_divides_the_k_steps():
    from accel_cuda.kernels import wxa16_tma_dot as td

    for n, k in [(4096, 14336), (6144, 4096), (512, 2048), (28672, 4096)]:
        for m in (3, 16, 64, 128):
            cfg = td.tma_dot_plan(m, n, k, 4, "untuned", HOPPER, 132)
            assert td.supports_tma_dot(n, k, k // 128, cfg, 4), (n, k, m, cfg)


def test_cpu_dequant_linear_is_the_reference():
    """Off the GPU accel-cuda's dequant_linear is exactly core's reference."""
    from accel_cuda.kernels.w8a16 import dequant_linear

    from accel.quantization.kernels.reference import dequant_linear as reference

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 256, generator=gen).to(torch.bfloat16)
    q = torch.randint(-128, 128, (64, 256), generator=gen, dtype=torch.int8)
    scale = (torch.rand(64, 2, generator=gen) * 0.01).to(torch.bfloat16)
    zp = torch.randint(-4, 4, (64, 2), generator=gen, dtype=torch.int8)
    bias = torch.randn(64, generator=gen).to(torch.bfloat16)
    assert torch.equal(dequant_linear(x, q, scale, zp, 128, bias), reference(x, q, scale, zp, 128, bias))
