"""The fused RMSNorm on a real GPU: close to float64, within fp rounding of torch's reference on the same device (the
sum of squares added in another order: ~1e-6 relative in float32, rare one-ulp differences after a 16-bit cast),
odd sizes and strided layouts, CUDA-graph replay, and wherever the runtime reaches it (the registry, the custom op,
the model's norms eager, compiled and captured). add_rms_norm, the residual add fused into the same kernel: h
bit for bit equal to torch's x + residual, the normalized h within the same bounds."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.norm_ops import add_rms_norm, rms_norm
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
# Per-row relative error against float64: the reference's own (two roundings in a 16-bit dtype) plus the kernel's.
BOUND_F64 = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3}
# float32 per element against the reference: both sum H squares in float32 in different orders (worst case a few
# times H / threads * 2^-24 each, halved by rsqrt; ~1e-7 typical) and take the hardware rsqrt.
FP32_ELEMENT = 4e-6
ULP = {torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}  # a 16-bit dtype's ulp relative to the value, at most
BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16}
_seed = iter(range(1_000_000))


def make(shape, dtype, weight_dtype=None, ones=False):
    """x [..., H] with rows of very different magnitudes (1e-3 .. 1e3) and a weight around 1 (or all ones)."""
    gen = torch.Generator(device="cuda").manual_seed(9000 + next(_seed))
    rows = torch.logspace(-3, 3, torch.Size(shape[:-1]).numel(), device="cuda").reshape(*shape[:-1], 1)
    x = (torch.randn(*shape, generator=gen, device="cuda") * rows).to(dtype)
    weight = torch.ones(shape[-1], device="cuda")
    if not ones:
        weight += 0.5 * torch.randn(shape[-1], generator=gen, device="cuda")
    return x, weight.to(weight_dtype or dtype)


def kernel(*args, **kwargs):
    from accel_cuda.kernels.norm import rms_norm as impl

    return impl(*args, **kwargs)


def no_fallback(*args: object) -> torch.Tensor:
    raise AssertionError("the Triton kernel fell back to the reference")


def float64_truth(x, weight, eps):
    x64 = x.double()
    return weight.double() * x64 / (x64.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def ulps(got, want):
    """Representable values between got and want, 16-bit dtypes (both carry x's sign)."""
    return (got.view(BITS[got.dtype]).long() - want.view(BITS[want.dtype]).long()).abs()


SHAPES = [
    (1, 4096),  # Llama-3-8B decode, batch 1
    (16, 4096),
    (64, 4096),
    (2048, 4096),  # a 2k prefill
    (3, 200),  # odd hiddens, rows per program with a partial block
    (17, 576),
    (5, 1000),
    (2, 3, 576),  # leading dims
    (7, 5120),
    (3, 14336),
    (2, 16384),  # the largest row the kernel takes
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_close_to_float64_and_to_the_reference(dtype, shape):
    x, weight = make(shape, dtype)
    got, want = kernel(x, weight, 1e-5), rms_norm(x, weight, 1e-5)
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    truth = float64_truth(x, weight, 1e-5)
    error = float(((got.double() - truth).norm(dim=-1) / truth.norm(dim=-1)).max())  # the worst row
    assert error < BOUND_F64[dtype], f"relative error against float64 {error:.2e}"
    rel = (got.double() - want.double()).abs() / want.double().abs().clamp_min(1e-30)
    if dtype == torch.float32:
        assert float(rel.max()) < FP32_ELEMENT
    else:  # the normalized value and the product each one ulp away at most, and rarely at all
        assert float(rel.max()) <= 2 * ULP[dtype]
        assert int((got != want).sum()) <= max(8, 2e-3 * got.numel())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_normalized_row_is_at_most_one_ulp_from_the_reference(dtype):
    """Weight 1: the output is the normalized row in x's dtype, rounded to nearest from a float32 value within
    ~1e-6 of torch's, so an element differs only next to a rounding boundary, and then by one ulp."""
    x, weight = make((2048, 4096), dtype, ones=True)
    d = ulps(kernel(x, weight, 1e-6), rms_norm(x, weight, 1e-6))
    assert int(d.max()) <= 1
    assert int((d > 0).sum()) <= 1e-3 * d.numel(), f"{int((d > 0).sum())} of {d.numel()} elements one ulp away"


@pytest.mark.parametrize(
    ("x_dtype", "w_dtype"),
    [(torch.bfloat16, torch.float32), (torch.float16, torch.bfloat16), (torch.float32, torch.bfloat16)],
)
def test_mixed_dtypes_promote_as_torch_does(x_dtype, w_dtype):
    x, weight = make((9, 576), x_dtype, w_dtype)
    got, want = kernel(x, weight, 1e-5), rms_norm(x, weight, 1e-5)
    assert got.dtype == want.dtype == torch.promote_types(x_dtype, w_dtype)
    torch.testing.assert_close(got, want, rtol=2 * ULP.get(x_dtype, FP32_ELEMENT), atol=0)


def test_layouts_it_takes_and_layouts_it_leaves_to_the_reference(monkeypatch):
    from accel_cuda.kernels import norm

    base, _ = make((6, 256), torch.bfloat16)
    w = torch.randn(400, device="cuda").bfloat16()
    taken = [
        (base[:, :200], w[::2]),  # rows at a stride past H; a strided weight
        (base[:1].expand(4, 256), w[:256]),  # rows expanded (stride 0)
        (base.reshape(3, 2, 256).transpose(0, 1)[:1], w[:256]),  # a size-1 leading dim of any stride
    ]
    for x, weight in taken:
        monkeypatch.setattr(norm, "reference", no_fallback)
        got = norm.rms_norm(x, weight, 1e-6)
        monkeypatch.undo()
        torch.testing.assert_close(got, rms_norm(x, weight, 1e-6), rtol=2 * ULP[torch.bfloat16], atol=0)
    left = [
        (base.T, torch.ones(6, device="cuda")),  # last dimension strided
        (base.reshape(3, 2, 256).transpose(0, 1), w[:256]),  # rows that do not collapse into one stride
        (base.double(), w[:256].double()),
        (torch.randn(2, norm.MAX_HIDDEN + 8, device="cuda"), torch.ones(norm.MAX_HIDDEN + 8, device="cuda")),
    ]
    for x, weight in left:
        assert torch.equal(norm.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6))


def test_cuda_graph_replays_with_new_rows():
    """No host sync: the kernel captures into a CUDA graph and each replay normalizes what is now in x."""
    x, weight = make((16, 4096), torch.bfloat16)
    kernel(x, weight, 1e-5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(x, weight, 1e-5)
    for _ in range(3):
        fresh, _ = make((16, 4096), torch.bfloat16)
        x.copy_(fresh)
        graph.replay()
        assert torch.equal(out, kernel(x, weight, 1e-5))


def test_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("rms_norm", "cuda").backend == "cuda"
    op = OPS["rms_norm"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            args = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            got, expected = torch.ops.accel.rms_norm(*args), op.reference(*args)
            scale = 1.0 if dtype == torch.float32 else 4.0  # as the conformance kit allows 16-bit outputs
            torch.testing.assert_close(got, expected, rtol=op.rtol * scale, atol=op.atol * scale)


def tiny_llama():
    from transformers import LlamaConfig

    return LlamaConfig(  # SmolLM2-135M's attention shapes: hidden 576, 9 heads of 64, 3 KV heads
        vocab_size=256, hidden_size=576, intermediate_size=256, num_hidden_layers=2, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=256,
    )


def test_the_models_norms_run_the_kernel():
    """On a GPU every norm of the model takes the CUDA kernel from the registry (kernel_meta says so), and the
    logits stay within bf16 rounding of the same model with reference norms."""
    from accel.runtime.model import RMSNorm, random_model

    runtime = random_model(tiny_llama(), dtype=torch.bfloat16, device="cuda")
    norms = [module for module in runtime.modules() if isinstance(module, RMSNorm)]
    assert len(norms) == 5 and {norm.backend for norm in norms} == {"cuda"}
    assert runtime.kernel_meta()["rms_norm"] == "cuda"
    tokens = torch.tensor([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]], device="cuda")
    lengths = torch.tensor([5, 3], device="cuda")
    with torch.no_grad():
        got = runtime.prefill(tokens, lengths, runtime.new_cache(2, 16), all_logits=True)
        for norm in norms:
            norm.impl = rms_norm
        expected = runtime.prefill(tokens, lengths, runtime.new_cache(2, 16), all_logits=True)
    error = float((got.float() - expected.float()).norm() / expected.float().norm())
    assert error < 1e-2, error


def test_captured_generation_matches_eager():
    """Decode steps with the kernel captured in CUDA graphs greedily generate what eager steps do."""
    from accel.runtime.generate import Generator
    from accel.runtime.model import random_model

    runtime = random_model(tiny_llama(), dtype=torch.bfloat16, device="cuda")
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6]]
    eager = Generator(runtime, max_batch=2, max_seq=32, cuda_graphs=False).generate(prompts, 8).tokens
    captured = Generator(runtime, max_batch=2, max_seq=32, cuda_graphs=True).generate(prompts, 8).tokens
    assert captured == eager


def test_compiled_decode_step_with_the_kernel_matches_eager():
    """As Generator(compile=True) runs it: under torch.compile the norms trace the reference (Inductor fuses it),
    eagerly they run the kernel; both steps give the same logits within fp32 rounding."""
    from accel.runtime.model import random_model

    runtime = random_model(tiny_llama(), dtype=torch.float32, device="cuda")
    step = torch.compile(runtime.decode, backend="aot_eager")
    prompts, lengths = torch.tensor([[1, 2, 3], [4, 5, 0]], device="cuda"), torch.tensor([3, 2], device="cuda")
    outputs = []
    for decode in (runtime.decode, step):
        cache = runtime.new_cache(2, 16)
        with torch.no_grad():
            runtime.prefill(prompts, lengths, cache)
            outputs.append(decode(torch.tensor([[7], [8]], device="cuda"), cache))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)


# add_rms_norm: the residual add fused into the norm (same kernel, ADD_RESIDUAL).
def add_kernel(*args, **kwargs):
    from accel_cuda.kernels.norm import add_rms_norm as impl

    return impl(*args, **kwargs)


def make_pair(shape, dtype, weight_dtype=None, ones=False):
    """make's x as the update, and a residual stream whose rows run the other way (1e3 .. 1e-3)."""
    x, weight = make(shape, dtype, weight_dtype, ones)
    gen = torch.Generator(device="cuda").manual_seed(19000 + next(_seed))
    rows = torch.logspace(3, -3, torch.Size(shape[:-1]).numel(), device="cuda").reshape(*shape[:-1], 1)
    return x, (torch.randn(*shape, generator=gen, device="cuda") * rows).to(dtype), weight


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_add_rms_norm_h_is_torchs_sum_and_the_norm_within_rms_norms_bounds(dtype, shape):
    x, residual, weight = make_pair(shape, dtype)
    normed, h = add_kernel(x, residual, weight, 1e-5)
    want_normed, want_h = add_rms_norm(x, residual, weight, 1e-5)
    assert h.dtype == dtype and h.shape == x.shape and torch.equal(h, want_h)  # bit for bit: the residual stream
    assert normed.dtype == want_normed.dtype == dtype and normed.shape == x.shape
    truth = float64_truth(want_h, weight, 1e-5)
    error = float(((normed.double() - truth).norm(dim=-1) / truth.norm(dim=-1)).max())
    assert error < BOUND_F64[dtype], f"relative error against float64 {error:.2e}"
    rel = (normed.double() - want_normed.double()).abs() / want_normed.double().abs().clamp_min(1e-30)
    if dtype == torch.float32:
        assert float(rel.max()) < FP32_ELEMENT
    else:
        assert float(rel.max()) <= 2 * ULP[dtype]
        assert int((normed != want_normed).sum()) <= max(8, 2e-3 * normed.numel())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_add_rms_norm_normalized_row_is_at_most_one_ulp_from_the_reference(dtype):
    x, residual, weight = make_pair((2048, 4096), dtype, ones=True)
    normed, h = add_kernel(x, residual, weight, 1e-6)
    want_normed, want_h = add_rms_norm(x, residual, weight, 1e-6)
    assert torch.equal(h, want_h)
    d = ulps(normed, want_normed)
    assert int(d.max()) <= 1
    assert int((d > 0).sum()) <= 1e-3 * d.numel(), f"{int((d > 0).sum())} of {d.numel()} elements one ulp away"


@pytest.mark.parametrize(("x_dtype", "w_dtype"), [(torch.bfloat16, torch.float32), (torch.float32, torch.bfloat16)])
def test_add_rms_norm_mixed_dtypes_promote_as_torch_does(x_dtype, w_dtype):
    x, residual, weight = make_pair((9, 576), x_dtype, w_dtype)
    (normed, h), (want_normed, want_h) = add_kernel(x, residual, weight, 1e-5), add_rms_norm(x, residual, weight, 1e-5)
    assert normed.dtype == want_normed.dtype == torch.promote_types(x_dtype, w_dtype) and h.dtype == x_dtype
    assert torch.equal(h, want_h)
    torch.testing.assert_close(normed, want_normed, rtol=2 * ULP.get(x_dtype, FP32_ELEMENT), atol=0)


def test_add_rms_norm_layouts_it_takes_and_layouts_it_leaves_to_the_reference(monkeypatch):
    from accel_cuda.kernels import norm

    base, _ = make((6, 256), torch.bfloat16)
    both = torch.randn(5, 2, 576, device="cuda").bfloat16()
    w = torch.randn(400, device="cuda").bfloat16()
    taken = [
        (base[:, :200], torch.randn(1, 200, device="cuda").bfloat16().expand(6, 200), w[::2]),  # slice; expanded
        (both[:, 0], both[:, 1], torch.ones(576, device="cuda").bfloat16()),  # two halves of one tensor
    ]
    for x, residual, weight in taken:
        monkeypatch.setattr(norm, "add_reference", no_fallback)
        normed, h = norm.add_rms_norm(x, residual, weight, 1e-6)
        monkeypatch.undo()
        want_normed, want_h = add_rms_norm(x, residual, weight, 1e-6)
        assert torch.equal(h, want_h)
        torch.testing.assert_close(normed, want_normed, rtol=2 * ULP[torch.bfloat16], atol=0)
    column_major = base.T.contiguous().T  # [6, 256], last dimension of stride 6
    left = [
        (column_major, base, w[:256]),  # x's last dimension strided
        (base, column_major, w[:256]),  # residual's
        (base.reshape(3, 2, 256), base.reshape(2, 3, 256).transpose(0, 1), w[:256]),  # residual rows do not collapse
        (base.double(), base.double(), w[:256].double()),
    ]
    for x, residual, weight in left:
        got, want = norm.add_rms_norm(x, residual, weight, 1e-6), add_rms_norm(x, residual, weight, 1e-6)
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


def test_add_rms_norm_cuda_graph_replays_with_new_rows():
    x, residual, weight = make_pair((16, 4096), torch.bfloat16)
    add_kernel(x, residual, weight, 1e-5)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        normed, h = add_kernel(x, residual, weight, 1e-5)
    for _ in range(3):
        fresh_x, fresh_residual, _ = make_pair((16, 4096), torch.bfloat16)
        x.copy_(fresh_x)
        residual.copy_(fresh_residual)
        graph.replay()
        want_normed, want_h = add_kernel(x, residual, weight, 1e-5)
        assert torch.equal(normed, want_normed) and torch.equal(h, want_h) and torch.equal(h, x + residual)


def test_add_rms_norm_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("add_rms_norm", "cuda").backend == "cuda"
    op = OPS["add_rms_norm"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            args = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            (normed, h), (want_normed, want_h) = torch.ops.accel.add_rms_norm(*args), op.reference(*args)
            assert torch.equal(h, want_h)
            scale = 1.0 if dtype == torch.float32 else 4.0  # as the conformance kit allows 16-bit outputs
            torch.testing.assert_close(normed, want_normed, rtol=op.rtol * scale, atol=op.atol * scale)
