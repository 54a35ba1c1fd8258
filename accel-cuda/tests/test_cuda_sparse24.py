"""The 2:4-sparse x int4 decode GEMV on a real GPU against a float64 computation, on fresh random inputs per case."""

from __future__ import annotations

import pytest
import torch
from accel_cuda.platform import CudaPlatform

from accel.plugins import load_registry
from accel.runtime.ops import OPS
from accel.runtime.packing import pack_int32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# Products and 4-term lane sums round to the half type as in the dense GEMV (w4a16_gemv._DOT_WORD).
BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
SHAPES = [(14336, 4096), (4096, 14336), (1000, 2048), (136, 384)]
_seed = iter(range(1_000_000))


def make_case(m: int, n: int, k: int, symmetric: bool, dtype: torch.dtype):
    """Random 2:4 int4 weights in the compact form, and the float64 dense W they stand for."""
    gen = torch.Generator(device="cuda").manual_seed(2000 + next(_seed))
    groups = k // 128
    q = torch.randint(-8, 8, (n, k // 2), generator=gen, device="cuda", dtype=torch.int8)
    keep = torch.rand(n, k // 4, 4, generator=gen, device="cuda").argsort(dim=2)[..., :2].sort(dim=2).values
    idx = keep.reshape(n, k // 8, 4).to(torch.int32)
    indices = (idx[..., 0] | idx[..., 1] << 2 | idx[..., 2] << 4 | idx[..., 3] << 6).to(torch.uint8)
    scale = (torch.rand(n, groups, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zp = None if symmetric else torch.randint(-8, 8, (n, groups), generator=gen, device="cuda", dtype=torch.int8)
    cols = (torch.arange(k // 2, device="cuda") // 2 * 4).reshape(1, -1) + keep.reshape(n, -1)
    kept = q.double() - (zp.double().gather(1, cols // 128) if zp is not None else 0.0)
    dense = torch.zeros(n, k, dtype=torch.float64, device="cuda").scatter_(1, cols, kept * scale.double().gather(
        1, cols // 128))
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    return x, pack_int32(q, 4), indices, scale, zp, dense


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("m", [1, 2, 3])
def test_matches_float64(m, n, k, symmetric, dtype):
    from accel_cuda.kernels.w4a16_sparse24_gemv import prepare_sparse24, w4a16_sparse24_gemv

    x, values, indices, scale, zp, dense = make_case(m, n, k, symmetric, dtype)
    words, positions = prepare_sparse24(values, indices)
    expected = x.double() @ dense.T
    for _ in range(2):  # the split-K counters must be left at zero for the next call
        got = w4a16_sparse24_gemv(x, words, positions, scale, zp)
        assert got.shape == (m, n) and got.dtype == dtype
        assert relative_error(got, expected) < BOUND[dtype]


@pytest.mark.parametrize("split", [1, 3, 7])
@pytest.mark.parametrize(("block_n", "ng", "prefetch"), [(8, 4, True), (16, 2, False), (32, 1, True)])
def test_every_element_written_under_a_graph(split, block_n, ng, prefetch):
    from accel_cuda.kernels.w4a16_sparse24_gemv import SparseGemvConfig, prepare_sparse24, w4a16_sparse24_gemv

    n, k = 1000, 2048  # N off the block sizes: the masked (not EVEN) variant
    x, values, indices, scale, zp, dense = make_case(1, n, k, False, torch.bfloat16)
    words, positions = prepare_sparse24(values, indices)
    cfg = SparseGemvConfig(block_n=block_n, ng=ng, split=split, prefetch=prefetch)
    out = torch.full((1, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    w4a16_sparse24_gemv(x, words, positions, scale, zp, config=cfg, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w4a16_sparse24_gemv(x, words, positions, scale, zp, config=cfg, out=out)
    expected = x.double() @ dense.T
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        assert relative_error(out, expected) < BOUND[torch.bfloat16]


def test_registered_op_matches_core_reference():
    """The CUDA backend's w4a16_sparse24_linear, prepared at load as the runtime does, against core's reference on
    the op's own inputs (K = 208, group 64: outside the GEMV, so the fallback path runs) and on a GEMV shape."""
    choice = load_registry().select_kernel("w4a16_sparse24_linear", CudaPlatform.capability())
    assert choice.backend == "cuda" and choice.prepare is not None
    op = OPS["w4a16_sparse24_linear"]
    x, values, indices, scale, zp, group = op.make_inputs(torch.Generator().manual_seed(5), "cuda", torch.bfloat16)
    cases = [(x, values, indices, scale, zp, group)]
    xg, vg, ig, sg, zg, _ = make_case(1, 512, 1024, False, torch.bfloat16)
    cases.append((xg, vg, ig, sg, zg, 128))
    for x, values, indices, scale, zp, group in cases:
        expected = op.reference(x.float(), values, indices, scale.float(), zp, group).double()
        args, kwargs = choice.prepare(values, indices, scale, zp, group)
        got = choice.impl(x, *args, **kwargs)
        assert relative_error(got, expected) < BOUND[torch.bfloat16]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k"), [(14336, 4096), (4096, 14336), (1000, 2048), (136, 384)])
@pytest.mark.parametrize("m", [1, 2])
def test_row_pair_variant_matches_float64(m, n, k, symmetric, dtype):
    from accel_cuda.kernels.w4a16_sparse24_gemv import SparseGemvConfig, prepare_sparse24
    from accel_cuda.kernels.w4a16_sparse24_pair import prepare_pairs, w4a16_sparse24_pair_gemv

    x, values, indices, scale, zp, dense = make_case(m, n, k, symmetric, dtype)
    words, positions = prepare_pairs(*prepare_sparse24(values, indices))
    expected = x.double() @ dense.T
    for cfg in (None, SparseGemvConfig(block_n=32, ng=2, split=3, prefetch=False)):
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        got = w4a16_sparse24_pair_gemv(x, words, positions, scale, zp, config=cfg, out=out)
        assert relative_error(got, expected) < BOUND[dtype]
