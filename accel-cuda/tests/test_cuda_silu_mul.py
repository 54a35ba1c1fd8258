"""The fused silu_and_mul on a real GPU: torch's arithmetic but for exp (tl.exp, exp2.approx, where torch takes expf),
so float32 within ~1e-6 (plus |g| 2^-24) relative of torch on the same device, a silu value at most one bf16 / fp16
ulp away and rarely at all, the product at most two; Llama-3-8B's I = 14336 at decode rows and a 2k prefill, odd
sizes and strided layouts, every 16-bit gate value, CUDA-graph replay, one compile for every row count, and the
registry and custom op choosing it."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.act_ops import silu_and_mul
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
INTER = 14336  # Llama-3-8B's intermediate size
# float32, per element against the reference: tl.exp (exp2.approx of g * log2 e: ~2^-22 plus |g| 2^-24 from rounding
# the product) and torch's expf (~2^-22) disagree by up to 2^-21 + |g| 2^-24 relative; 1 + exp, the division and the
# product may each round to the neighbouring float32 value on top (2^-23 each).
FP32_REL, FP32_PER_GATE = 2.0**-21 + 3 * 2.0**-23, 2.0**-24
# 16-bit: the share of elements that may differ at all (a float32 silu within ~1e-7 .. 1e-6 of a rounding boundary of
# the dtype; expected ~1e-4 in bf16, a few 1e-4 in fp16, whose ulp is 8x finer).
DIFFER = {torch.bfloat16: 1e-3, torch.float16: 4e-3}
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
_seed = iter(range(1_000_000))


def make(shape, dtype, up_ones=False):
    """x [..., 2I]: gates N(0, 3) with every 7th five times wider (silu's tails), up rows of 1e-1 .. 1e1 (or ones:
    then y is silu's value itself)."""
    gen = torch.Generator(device="cuda").manual_seed(7000 + next(_seed))
    *lead, two_i = shape
    gate = 3.0 * torch.randn(*lead, two_i // 2, generator=gen, device="cuda")
    gate.view(-1)[::7] *= 5.0
    rows = torch.logspace(-1, 1, torch.Size(lead).numel(), device="cuda").reshape(*lead, 1)
    up = torch.ones_like(gate) if up_ones else torch.randn(*lead, two_i // 2, generator=gen, device="cuda") * rows
    return torch.cat([gate, up], -1).to(dtype)


def kernel(*args, **kwargs):
    from accel_cuda.kernels.act import silu_and_mul as impl

    return impl(*args, **kwargs)


def no_fallback(*args: object) -> torch.Tensor:
    raise AssertionError("the Triton kernel fell back to the reference")


def ulps(got, want):
    """Representable values between got and want, counted across zero."""
    bits = BITS[got.dtype]
    a, b = got.view(bits).long(), want.view(bits).long()
    top = 1 << (8 * got.element_size() - 1)
    a, b = torch.where(a < 0, -(a + top), a), torch.where(b < 0, -(b + top), b)
    return (a - b).abs()


def assert_close_to_reference(x, got, want):
    if x.dtype == torch.float32:
        gate = x[..., : x.shape[-1] // 2].abs()
        bound = (FP32_REL + FP32_PER_GATE * gate) * want.abs() + 1e-36  # 1e-36: exp's overflow edge in fp32
        assert bool(((got - want).abs() <= bound).all()), float(((got - want).abs() / want.abs()).max())
        return
    d = ulps(got, want)
    assert int(d.max()) <= 2  # silu one ulp away at most; its product with up may straddle two of the output's
    assert int((d > 0).sum()) <= max(8, DIFFER[x.dtype] * d.numel()), f"{int((d > 0).sum())} of {d.numel()} differ"


SHAPES = [
    (1, 2 * INTER),  # Llama-3-8B decode, batch 1
    (16, 2 * INTER),
    (64, 2 * INTER),
    (2048, 2 * INTER),  # a 2k prefill
    (1, 2 * 1536),  # SmolLM2's
    (3, 400),  # partial column block
    (5, 74),  # odd I: the up half off every 16-byte boundary
    (2, 3, 1152),  # leading dims
    (17, 2000),
    (7, 2 * 11008),  # Llama-2-7B's
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_close_to_the_reference_and_to_float64(dtype, shape):
    x = make(shape, dtype)
    got, want = kernel(x), silu_and_mul(x)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == (*shape[:-1], shape[-1] // 2)
    assert got.is_contiguous()
    assert_close_to_reference(x, got, want)
    # Against float64: a 16-bit silu one ulp off the exact value at most (2^-7 / 2^-10 relative) and the product's
    # rounding (half that); float32: exp's error as above, a few roundings. fp16's subnormals (spacing 2^-24) add up
    # to a spacing to silu (times |up|) and half a spacing to the product.
    gate, up = x.double().split(shape[-1] // 2, -1)
    truth = gate * torch.sigmoid(gate) * up
    if dtype == torch.float32:
        rel = FP32_REL + 2 * FP32_PER_GATE * gate.abs()
    else:
        rel = 3 * (2.0**-8 if dtype == torch.bfloat16 else 2.0**-11)
    tiny = (up.abs() + 1) * 2.0**-24 if dtype == torch.float16 else 1e-36
    assert bool(((got.double() - truth).abs() <= rel * truth.abs() + tiny).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_silu_alone_is_at_most_one_ulp_from_the_reference(dtype):
    """up = 1: the output is silu(g) in x's dtype, rounded to nearest from a float32 value within ~1e-6 of torch's,
    so an element differs only next to a rounding boundary, and then by one ulp."""
    x = make((2048, 2 * INTER), dtype, up_ones=True)
    d = ulps(kernel(x), silu_and_mul(x))
    assert int(d.max()) <= 1
    assert int((d > 0).sum()) <= DIFFER[dtype] * d.numel(), f"{int((d > 0).sum())} of {d.numel()} one ulp away"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_finite_16bit_gate(dtype):
    """silu of every finite value of the dtype (up = 1): within one ulp of torch's, rarely off; the tails (exp(-g)
    overflowing to inf or vanishing) exactly torch's."""
    values = torch.arange(-32768, 32768, dtype=torch.int32, device="cuda").to(torch.int16).view(dtype)
    gate = values[values.isfinite()]
    x = torch.cat([gate, torch.ones_like(gate)])[None]
    got, want = kernel(x), silu_and_mul(x)
    d = ulps(got, want)
    assert int(d.max()) <= 1
    assert int((d > 0).sum()) <= DIFFER[dtype] * d.numel(), f"{int((d > 0).sum())} of {d.numel()} one ulp away"
    tails = gate.float().abs() > 100
    assert torch.equal(got[0][tails], want[0][tails])


def test_layouts_it_takes_and_layouts_it_leaves_to_the_reference(monkeypatch):
    from accel_cuda.kernels import act

    wide = make((6, 1200), torch.bfloat16)
    taken = [
        wide[:, 200:1000],  # rows at a stride past 2I (a slice of a wider output)
        make((1, 800), torch.bfloat16).expand(4, 800),  # rows expanded (stride 0)
        make((3, 1, 256), torch.bfloat16).transpose(0, 1),  # a size-1 leading dim of any stride
    ]
    for x in taken:
        monkeypatch.setattr(act, "reference", no_fallback)
        got = act.silu_and_mul(x)
        monkeypatch.undo()
        assert_close_to_reference(x, got, silu_and_mul(x))
    left = [
        make((64, 6), torch.bfloat16).T,  # last dimension strided
        make((4, 3, 64), torch.bfloat16).transpose(0, 1),  # rows that do not collapse into one stride
        make((2, 64), torch.float64),
        make((0, 64), torch.bfloat16),
    ]
    for x in left:
        assert torch.equal(act.silu_and_mul(x), silu_and_mul(x))


def test_cuda_graph_replays_with_new_rows():
    """No host sync: the kernel captures into a CUDA graph and each replay computes what is now in x."""
    x = make((16, 2 * INTER), torch.bfloat16)
    kernel(x)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(x)
    for _ in range(3):
        x.copy_(make((16, 2 * INTER), torch.bfloat16))
        graph.replay()
        assert torch.equal(out, kernel(x))


def test_one_compile_for_every_row_count():
    """The row count is the grid alone: decode at 1 .. 64 rows and a prefill reuse one compile (counted in Triton's
    per-device kernel caches)."""
    from accel_cuda.kernels import act

    def compiles() -> int:
        return sum(len(caches[0]) for caches in act._silu_and_mul_kernel.device_caches.values())

    kernel(make((1, 2 * INTER), torch.bfloat16))
    before = compiles()
    for rows in (2, 16, 17, 64, 2048):
        kernel(make((rows, 2 * INTER), torch.bfloat16))
    assert compiles() == before


def test_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("silu_and_mul", "cuda").backend == "cuda"
    op = OPS["silu_and_mul"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            (x,) = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            got, expected = torch.ops.accel.silu_and_mul(x), op.reference(x)
            assert_close_to_reference(x, got, expected)
            scale = 1.0 if dtype == torch.float32 else 4.0  # as the conformance kit allows 16-bit outputs
            torch.testing.assert_close(got, expected, rtol=op.rtol * scale, atol=op.atol * scale)
