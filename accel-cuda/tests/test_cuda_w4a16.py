"""The Triton W4A16 linear on a real GPU against a float64 computation, on fresh random inputs for every case."""

from __future__ import annotations

import math

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

# ||got - ref|| / ||ref|| against float64 (METHOD.md): the kernel's dequantized codes are exact and it
# accumulates in fp32, so the output rounding dominates (about 2^-9 relative for bf16, 2^-12 for fp16); the
# dequantize-then-cuBLAS path also rounds W to x's dtype once.
BOUND = {torch.bfloat16: 8e-3, torch.float16: 2e-3, torch.float32: 1e-4}
MS = [1, 2, 16, 33, 64, 128]
# (N, K, group): Llama-3-8B up/gate and down, a partial last group (K=200, g=64) with N off every block size,
# and a small group.
SHAPES = [(14336, 4096, 128), (4096, 14336, 128), (76, 200, 64), (1000, 512, 32)]

_seed = iter(range(1_000_000))


def make_case(m: int, n: int, k: int, group: int, symmetric: bool, dtype: torch.dtype):
    gen = torch.Generator(device="cuda").manual_seed(1000 + next(_seed))
    groups = math.ceil(k / group)
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zero_point = None if symmetric else torch.randint(-8, 8, (n, groups), generator=gen, device="cuda",
                                                      dtype=torch.int8)
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    return x, q, scale, zero_point


def float64_reference(x, q, scale, zero_point, group):
    cols = torch.arange(q.shape[1], device=q.device) // group
    weight = q.double()
    if zero_point is not None:
        weight -= zero_point.double()[:, cols]
    weight *= scale.double()[:, cols]
    return x.double() @ weight.T


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def run_kernel(x, q, scale, zero_point, group, **kwargs):
    from accel_cuda.kernels.w4a16 import w4a16_linear

    return w4a16_linear(x, pack_int32(q, 4), scale, zero_point, group, **kwargs)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k", "group"), SHAPES, ids=[f"{n}x{k}g{g}" for n, k, g in SHAPES])
@pytest.mark.parametrize("m", MS)
def test_matches_float64(m, n, k, group, symmetric, dtype):
    x, q, scale, zero_point = make_case(m, n, k, group, symmetric, dtype)
    got = run_kernel(x, q, scale, zero_point, group)
    assert got.shape == (m, n) and got.dtype == dtype
    error = relative_error(got, float64_reference(x, q, scale, zero_point, group))
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def _configs():
    from accel_cuda.kernels.w4a16 import Config

    return {
        "gemv-m1": Config("gemv", block_m=1, block_n=32, split=1, prefetch=True, num_stages=1),
        "gemv-m4-split3": Config("gemv", block_m=4, block_n=64, split=3, num_stages=3),
        "dot-split1": Config("dot", block_m=16, block_n=64, split=1),
        "dot-split4": Config("dot", block_m=32, block_n=128, split=4, num_warps=8),
        "dot-wide-split2": Config("dot", block_m=16, block_n=32, num_g=4, split=2),
        "dot8-split1": Config("dot8", block_m=16, block_n=64, split=1),
        "dot8-wide-split3": Config("dot8", block_m=32, block_n=32, num_g=2, split=3),
        "dequant": Config("dequant", block_n=32),
    }


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    "name",
    ["gemv-m1", "gemv-m4-split3", "dot-split1", "dot-split4", "dot-wide-split2", "dot8-split1", "dot8-wide-split3",
     "dequant"],
)
@pytest.mark.parametrize(("m", "n", "k", "group"), [(3, 100, 200, 64), (7, 4096, 1024, 128)])
def test_every_path_writes_every_element(m, n, k, group, name, dtype, monkeypatch):
    """Each path by hand, on poisoned buffers: output and split-K workspace pre-filled with NaN."""
    from accel_cuda.kernels import w4a16

    monkeypatch.setattr(w4a16, "POISON", True)
    x, q, scale, zero_point = make_case(m, n, k, group, False, dtype)
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    got = run_kernel(x, q, scale, zero_point, group, out=out, config=_configs()[name])
    assert got.data_ptr() == out.data_ptr()
    error = relative_error(out, float64_reference(x, q, scale, zero_point, group))
    assert error < BOUND[dtype], f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("m", [1, 5, 100])
def test_float32_activations(m):
    x, q, scale, zero_point = make_case(m, 300, 512, 128, False, torch.float32)
    error = relative_error(run_kernel(x, q, scale, zero_point, 128), float64_reference(x, q, scale, zero_point, 128))
    assert error < BOUND[torch.float32], f"relative error {error:.2e}"


def test_leading_dims_and_per_channel_scales():
    x, q, scale, zero_point = make_case(6, 96, 256, 256, True, torch.bfloat16)
    got = run_kernel(x.reshape(2, 3, 256), q, scale, zero_point, -1)
    assert got.shape == (2, 3, 96)
    error = relative_error(got.reshape(6, 96), float64_reference(x, q, scale, zero_point, 256))
    assert error < BOUND[torch.bfloat16]


def test_matches_core_reference_op():
    """The registered kernel against core's reference, both on the op's own inputs; the reference runs in fp32
    (x and scales upcast exactly) so that its own output rounding does not count against the kernel."""
    op = OPS["w4a16_linear"]
    choice = load_registry().select_kernel("w4a16_linear", CudaPlatform.capability())
    assert choice.backend == "cuda"
    for dtype in (torch.float16, torch.bfloat16):
        x, packed, scale, zero_point, group = op.make_inputs(torch.Generator().manual_seed(3), "cuda", dtype)
        expected = op.reference(x.float(), packed, scale.float(), zero_point, group).double()
        error = relative_error(choice.impl(x, packed, scale, zero_point, group), expected)
        assert error < BOUND[dtype], f"{dtype}: relative error {error:.2e}"


# The decode path: words permuted once at load (w4a16.prepare), the packed-pair GEMV for the M it is tuned for,
# the tensor-core and dequantize paths reading the same permuted words for larger M. The GEMV's products and
# 4-term lane sums round to the half type (w4a16_gemv._DOT_WORD), so its bound is looser than the exact paths'.
PERMUTED_BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
GEMV_SHAPES = [(14336, 4096), (4096, 14336), (1000, 4096), (4104, 1152)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
@pytest.mark.parametrize(("n", "k"), GEMV_SHAPES, ids=[f"{n}x{k}" for n, k in GEMV_SHAPES])
@pytest.mark.parametrize("m", [1, 2, 3, 16, 200])
def test_prepared_weights_match_float64(m, n, k, symmetric, dtype):
    from accel_cuda.kernels.w4a16 import prepare, w4a16_linear

    x, q, scale, zero_point = make_case(m, n, k, 128, symmetric, dtype)
    (words, s, z, g), kwargs = prepare(pack_int32(q, 4), scale, zero_point, 128)
    assert kwargs == {"permuted": True}
    expected = float64_reference(x, q, scale, zero_point, 128)
    for _ in range(2):  # the split-K counters must be left at zero for the next call
        got = w4a16_linear(x, words, s, z, g, **kwargs)
        assert relative_error(got, expected) < PERMUTED_BOUND[dtype]


@pytest.mark.parametrize("split", [1, 3, 7])
@pytest.mark.parametrize("block_n", [16, 64])
def test_gemv_every_element_written_under_a_graph(split, block_n, monkeypatch):
    from accel_cuda.kernels import w4a16_gemv as gv

    n, k = 1000, 2048  # N off the block sizes: the masked (not EVEN) variant
    x, q, scale, zero_point = make_case(1, n, k, 128, False, torch.bfloat16)
    words = gv.permute_nibbles(pack_int32(q, 4))
    cfg = gv.GemvConfig(block_n=block_n, ng=2, split=split, prefetch=split == 3)
    out = torch.full((1, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    gv.w4a16_gemv(x, words, scale, zero_point, config=cfg, out=out, permuted=True)  # compile outside the capture
    out.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        gv.w4a16_gemv(x, words, scale, zero_point, config=cfg, out=out, permuted=True)
    expected = float64_reference(x, q, scale, zero_point, 128)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        assert relative_error(out, expected) < PERMUTED_BOUND[torch.bfloat16]


def test_gemv_refuses_unpermuted_words():
    from accel_cuda.kernels import w4a16_gemv as gv

    x, q, scale, _ = make_case(1, 64, 256, 128, True, torch.bfloat16)
    with pytest.raises(ValueError, match="permute_nibbles"):
        gv.w4a16_gemv(x, pack_int32(q, 4), scale, None)
