"""The TMA-pipelined decode GEMVs (dense int4 and 2:4 x int4) on a real Hopper GPU against a float64 computation, on
fresh random inputs per case; and the W4A16 op choosing the dense one from its tuned table."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.packing import pack_int32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                       reason="needs a Hopper (sm_90) GPU"),
]

BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}  # half-precision pair products, as the register GEMVs
SHAPES = [(14336, 4096), (4096, 14336), (512, 2048)]
_seed = iter(range(1_000_000))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def dense_case(m: int, n: int, k: int, symmetric: bool, dtype: torch.dtype):
    """Random int4 codes (permuted words), scales, 8 + zero point in the scales' dtype, and float64 W."""
    from accel_cuda.kernels.nibbles import permute_nibbles

    gen = torch.Generator(device="cuda").manual_seed(3000 + next(_seed))
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zp = None if symmetric else torch.randint(-8, 8, (n, k // 128), generator=gen, device="cuda", dtype=torch.int8)
    cols = torch.arange(k, device="cuda") // 128
    w = (q.double() - (zp.double()[:, cols] if zp is not None else 0.0)) * scale.double()[:, cols]
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    zero_plus8 = None if zp is None else (zp.float() + 8).to(dtype)
    return x, permute_nibbles(pack_int32(q, 4)), scale, zero_plus8, w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize(("m", "block_n", "ng", "split", "stages"),
                         [(1, 16, 8, 1, 3), (1, 32, 16, 1, 4), (2, 8, 8, 2, 3), (3, 16, 8, 4, 2)])
def test_dense_tma_matches_float64(m, block_n, ng, split, stages, n, k, symmetric, dtype):
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, supports_tma, w4a16_tma_gemv

    cfg = TmaGemvConfig(block_n=block_n, ng=ng, split=split, stages=stages)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    x, words, scale, zero_plus8, w = dense_case(m, n, k, symmetric, dtype)
    expected = x.double() @ w.T
    for _ in range(2):  # split-K counters are left at zero for the next call
        got = w4a16_tma_gemv(x, words, scale, zero_plus8, config=cfg)
        assert got.shape == (m, n) and got.dtype == dtype
        assert relative_error(got, expected) < BOUND[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize(("m", "block_n", "ng", "split"), [(1, 32, 8, 1), (2, 16, 8, 2), (3, 64, 8, 4)])
def test_sparse_tma_matches_float64(m, block_n, ng, split, n, k, symmetric, dtype):
    from accel_cuda.kernels.w4a16_sparse24_gemv import prepare_sparse24
    from accel_cuda.kernels.w4a16_sparse24_tma import (
        TmaSparseConfig,
        interleave_rows,
        supports_tma,
        w4a16_sparse24_tma_gemv,
    )

    cfg = TmaSparseConfig(block_n=block_n, ng=ng, split=split)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    gen = torch.Generator(device="cuda").manual_seed(4000 + next(_seed))
    q = torch.randint(-8, 8, (n, k // 2), generator=gen, device="cuda", dtype=torch.int8)
    keep = torch.rand(n, k // 4, 4, generator=gen, device="cuda").argsort(dim=2)[..., :2].sort(dim=2).values
    idx = keep.reshape(n, k // 8, 4).to(torch.int32)
    indices = (idx[..., 0] | idx[..., 1] << 2 | idx[..., 2] << 4 | idx[..., 3] << 6).to(torch.uint8)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zp = None if symmetric else torch.randint(-8, 8, (n, k // 128), generator=gen, device="cuda", dtype=torch.int8)
    cols = (torch.arange(k // 2, device="cuda") // 2 * 4).reshape(1, -1) + keep.reshape(n, -1)
    kept = q.double() - (zp.double().gather(1, cols // 128) if zp is not None else 0.0)
    w = torch.zeros(n, k, dtype=torch.float64, device="cuda").scatter_(
        1, cols, kept * scale.double().gather(1, cols // 128))
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    words, positions = (interleave_rows(t) for t in prepare_sparse24(pack_int32(q, 4), indices))
    zero_plus8 = None if zp is None else (zp.float() + 8).to(dtype)
    got = w4a16_sparse24_tma_gemv(x, words, positions, scale, zero_plus8, config=cfg)
    assert relative_error(got, x.double() @ w.T) < BOUND[dtype]


@pytest.mark.parametrize("split", [1, 4])
def test_dense_tma_writes_every_element_under_a_graph(split):
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, w4a16_tma_gemv

    n, k = 512, 4096
    x, words, scale, _, w = dense_case(1, n, k, True, torch.bfloat16)
    cfg = TmaGemvConfig(block_n=16, ng=8, split=split)
    out = torch.full((1, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    w4a16_tma_gemv(x, words, scale, None, config=cfg, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w4a16_tma_gemv(x, words, scale, None, config=cfg, out=out)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert relative_error(out, x.double() @ w.T) < BOUND[torch.bfloat16]


def test_op_takes_the_tuned_tma_gemv_for_symmetric_decode(monkeypatch):
    """The W4A16 op sends a symmetric M=1 call on a tuned Hopper shape to the TMA GEMV, and its result matches
    float64; with zero points it stays on the register GEMV."""
    from accel_cuda.kernels import w4a16_gemv_tma as gt
    from accel_cuda.kernels.w4a16 import w4a16_linear

    name = torch.cuda.get_device_properties(0).name
    n, k = 14336, 4096
    table = {name: {f"{n}x{k}g128": {"1": {"block_n": 16, "ng": 8, "split": 1, "stages": 3, "num_warps": 4}}}}
    monkeypatch.setattr(gt, "_tuned", lambda: table)
    calls = []
    real = gt.w4a16_tma_gemv
    monkeypatch.setattr(gt, "w4a16_tma_gemv", lambda *a, **kw: calls.append(kw["config"]) or real(*a, **kw))
    x, words, scale, _, w = dense_case(1, n, k, True, torch.bfloat16)
    got = w4a16_linear(x, words, scale, None, 128, permuted=True)
    assert calls == [gt.TmaGemvConfig(16, 8, 1, 3, 4)]
    assert relative_error(got, x.double() @ w.T) < BOUND[torch.bfloat16]
    zp = torch.zeros(n, k // 128, dtype=torch.int8, device="cuda")
    w4a16_linear(x, words, scale, zp, 128, permuted=True)
    assert len(calls) == 1
