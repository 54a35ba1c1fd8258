"""int8 and fp8 W8A8 linear on a real GPU against float64, fresh random inputs for every case."""

from __future__ import annotations

import pytest
import torch

from accel.quantization.activation_quant import ActivationQuantArgs, quantize_activation
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# ||got - ref|| / ||ref|| against float64 on the same codes: int8 products are exact, so the output rounding
# dominates (2^-9 bf16, 2^-12 fp16); fp8 products accumulate in fp32 on the tensor cores (Hopper keeps fewer
# bits between promotions), and a code may differ where x / s rounds at a tie.
BOUND = {torch.bfloat16: 8e-3, torch.float16: 2e-3, torch.float32: 1e-5}
FP8_BOUND = {torch.bfloat16: 8e-3, torch.float16: 3e-3, torch.float32: 1e-3}
MS = [1, 5, 16, 33, 100]
SHAPES = [(76, 200), (1000, 512), (4096, 1024)]

_seed = iter(range(1_000_000))
needs_hopper = pytest.mark.skipif(
    not (torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0)),
    reason="the TMA kernel needs Hopper (TMA, 8-bit wgmma)",
)


def make_case(m, n, k, fp8, dtype, bias=True, per_tensor=False):
    gen = torch.Generator(device="cuda").manual_seed(9000 + next(_seed))
    weight = torch.randn(n, k, generator=gen, device="cuda") * 0.05
    strategy = "tensor" if per_tensor else "channel"
    qw = quantize(weight, WeightQuantArgs(num_bits=8, strategy=strategy, type="float" if fp8 else "int"))
    # Rows of very different sizes, so per-token scales matter.
    x = torch.randn(m, k, generator=gen, device="cuda") * torch.logspace(-2, 1, m, device="cuda")[:, None]
    b = (torch.randn(n, generator=gen, device="cuda") * 0.1).to(dtype) if bias else None
    return x.to(dtype), qw.q, qw.scale, b


def float64_reference(x, q, scale, bias, fp8, input_scale=None):
    args = ActivationQuantArgs(
        type="float" if fp8 else "int",
        strategy="token" if input_scale is None else "tensor",
        dynamic=input_scale is None,
    )
    qx, sx = quantize_activation(x, args, input_scale)
    y = (qx.double() @ q.double().T) * sx.double() * scale.double().reshape(-1)
    return y + bias.double() if bias is not None else y


def relative_error(got, expected):
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def run(fp8, *args, **kwargs):
    from accel_cuda.kernels import w8a8

    return (w8a8.fp8_linear if fp8 else w8a8.w8a8_int8_linear)(*args, **kwargs)


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize("m", MS)
def test_matches_float64(m, n, k, dtype, fp8):
    x, q, scale, bias = make_case(m, n, k, fp8, dtype)
    got = run(fp8, x, q, scale, None, bias) if fp8 else run(fp8, x, q, scale, bias)
    assert got.shape == (m, n) and got.dtype == dtype
    error = relative_error(got, float64_reference(x, q, scale, bias, fp8))
    assert error < (FP8_BOUND if fp8 else BOUND)[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize(("n", "k"), [(14336, 4096), (4096, 14336)], ids=["up", "down"])
@pytest.mark.parametrize("m", [1, 16, 256])
def test_llama_shapes(m, n, k, fp8):
    x, q, scale, _ = make_case(m, n, k, fp8, torch.bfloat16, bias=False)
    error = relative_error(run(fp8, x, q, scale), float64_reference(x, q, scale, None, fp8))
    assert error < (FP8_BOUND if fp8 else BOUND)[torch.bfloat16], f"relative error {error:.2e}"


def _configs():
    from accel_cuda.kernels.w8a8 import W8Config

    return {
        "triton-m16": W8Config(block_m=16, block_n=64, block_k=256, split=1),
        "triton-split3": W8Config(block_m=16, block_n=32, block_k=128, split=3),
        "triton-m64": W8Config(block_m=64, block_n=64, block_k=128, split=2),
        "triton-m128": W8Config(block_m=128, block_n=128, block_k=128, num_warps=8),
        "cublas": W8Config("cublas"),
        "scaled_mm": W8Config("scaled_mm"),
    }


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("name", ["triton-m16", "triton-split3", "triton-m64", "triton-m128", "cublas", "scaled_mm"])
@pytest.mark.parametrize(("m", "n", "k"), [(3, 100, 208), (40, 1024, 1024)])
def test_every_path_writes_every_element(m, n, k, name, fp8, monkeypatch):
    """Each path by hand, on NaN-poisoned outputs and workspaces; a bias and per-channel scales."""
    from accel_cuda.kernels import w8a8

    if (name == "scaled_mm" and not fp8) or (name == "cublas" and not fp8 and m <= 16):
        pytest.skip("no such library path")
    if fp8 and name in ("cublas", "scaled_mm") and n % 16:
        pytest.skip("cuBLASLt fp8 needs N, K multiples of 16")
    monkeypatch.setattr(w8a8, "POISON", True)
    x, q, scale, bias = make_case(m, n, k, fp8, torch.bfloat16)
    config = _configs()[name]
    got = run(fp8, x, q, scale, None, bias, config=config) if fp8 else run(fp8, x, q, scale, bias, config=config)
    error = relative_error(got, float64_reference(x, q, scale, bias, fp8))
    assert error < (FP8_BOUND if fp8 else BOUND)[torch.bfloat16], f"{name}: relative error {error:.2e}"


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
def test_codes_match_activation_quant(fp8):
    from accel_cuda.kernels.w8a8 import quantize_rows

    x = torch.randn(37, 1000, device="cuda", dtype=torch.bfloat16) * 3
    codes, scales = quantize_rows(x, fp8)
    expected, expected_scales = quantize_activation(x, ActivationQuantArgs(type="float" if fp8 else "int"))
    torch.testing.assert_close(scales, expected_scales.squeeze(-1), rtol=0, atol=0)
    # A code may differ where x / s lands within rounding of a tie; never by more than one step.
    differ = codes.float() != expected.float()
    assert int(differ.sum()) <= max(4, differ.numel() // 10_000), f"{int(differ.sum())} codes differ"
    if fp8:
        step = (expected.float().abs() * 2**-3).clamp(min=2**-9)
    else:
        step = torch.ones_like(expected, dtype=torch.float32)
    assert ((codes.float() - expected.float()).abs() <= step * 1.01).all()


def test_fp8_static_scale_per_tensor_weight_and_leading_dims():
    x, q, scale, bias = make_case(12, 512, 256, True, torch.bfloat16, per_tensor=True)
    input_scale = (x.float().abs().amax() / 448 * 1.3).reshape(1)
    got = run(True, x.reshape(3, 4, 256), q, scale, input_scale, bias)
    assert got.shape == (3, 4, 512)
    error = relative_error(got.reshape(12, 512), float64_reference(x, q, scale, bias, True, input_scale))
    assert error < FP8_BOUND[torch.bfloat16], f"relative error {error:.2e}"


@pytest.mark.parametrize("m", [1, 100])
def test_float32_activations(m):
    x, q, scale, bias = make_case(m, 300, 512, False, torch.float32)
    error = relative_error(run(False, x, q, scale, bias), float64_reference(x, q, scale, bias, False))
    assert error < BOUND[torch.float32], f"relative error {error:.2e}"


@pytest.mark.parametrize("name", ["w8a8_int8_linear", "fp8_linear"])
def test_registry_and_custom_op_run_the_kernel(name):
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice(name, "cuda").backend == "cuda"
    op = OPS[name]
    for make_inputs in op.input_makers:
        args = make_inputs(torch.Generator().manual_seed(2), "cuda", torch.bfloat16)
        fp8 = name == "fp8_linear"
        x, q, scale = args[:3]
        expected = float64_reference(x, q, scale, args[-1], fp8, args[3] if fp8 else None)
        error = relative_error(getattr(torch.ops.accel, name)(*args), expected)
        assert error < (FP8_BOUND if fp8 else BOUND)[torch.bfloat16], f"relative error {error:.2e}"


# The Hopper TMA kernel (w8a8_tma.py): by hand on odd shapes, through the plan on Llama shapes, in a graph.
@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("m", "n", "k", "bm", "bn", "split", "bias", "bk"),
    [
        (1, 1024, 4096, 16, 128, 4, True, 128),
        (5, 384, 1280, 16, 128, 5, False, 128),
        (16, 4096, 1024, 16, 64, 1, True, 128),
        (17, 256, 2048, 32, 128, 2, True, 128),
        (33, 1024, 1024, 64, 128, 2, False, 128),
        (64, 512, 4096, 64, 64, 8, True, 128),
        (3, 640, 2560, 16, 128, 5, True, 256),  # ku 2: two K boxes per loop iteration
        (64, 512, 4096, 64, 64, 4, False, 256),
    ],
)
@pytest.mark.gpu
@needs_hopper
def test_tma_matches_float64(m, n, k, bm, bn, split, bias, bk, dtype, fp8, monkeypatch):
    from accel_cuda.kernels import w8a8
    monkeypatch.setattr(w8a8, "POISON", True)
    x, q, scale, b = make_case(m, n, k, fp8, dtype, bias=bias)
    warps = 8 if bm == 64 else 4
    config = w8a8.W8Config("tma", block_m=bm, block_n=bn, block_k=bk, split=split, num_warps=warps, num_stages=4)
    got = run(fp8, x, q, scale, None, b, config=config) if fp8 else run(fp8, x, q, scale, b, config=config)
    assert got.shape == (m, n) and got.dtype == dtype
    error = relative_error(got, float64_reference(x, q, scale, b, fp8))
    assert error < (FP8_BOUND if fp8 else BOUND)[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize(("n", "k"), [(14336, 4096), (4096, 14336), (6144, 4096)])
@pytest.mark.parametrize("m", [1, 3, 16, 64])
@pytest.mark.gpu
@needs_hopper
def test_plan_takes_tma_on_hopper(m, n, k, fp8):
    """Llama-3-8B shapes through the op's own plan (which picks this kernel up to M = 64 on Hopper)."""
    from accel_cuda.kernels import w8a8
    x, q, scale, _b = make_case(m, n, k, fp8, torch.bfloat16, bias=False)
    assert w8a8._tma_config(m, n, k, fp8, x) is not None
    error = relative_error(run(fp8, x, q, scale), float64_reference(x, q, scale, None, fp8))
    assert error < (FP8_BOUND if fp8 else BOUND)[torch.bfloat16], f"relative error {error:.2e}"


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.gpu
@needs_hopper
def test_tma_graph_replay_with_split_k(fp8):
    """Captured once, replayed on new inputs: the split-K counters reset themselves, outputs are rewritten."""
    from accel_cuda.kernels import w8a8
    config = w8a8.W8Config("tma", block_m=16, block_n=128, block_k=128, split=4, num_stages=6)
    x, q, scale, b = make_case(7, 1024, 4096, fp8, torch.bfloat16, bias=True)
    static_x = x.clone()

    def call():
        return run(fp8, static_x, q, scale, None, b, config=config) if fp8 else run(fp8, static_x, q, scale, b,
                                                                                    config=config)

    call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = call()
    for _i in range(3):
        fresh, *_rest = make_case(7, 1024, 4096, fp8, torch.bfloat16, bias=True)
        static_x.copy_(fresh)
        out.fill_(float("nan"))
        graph.replay()
        error = relative_error(out, float64_reference(static_x, q, scale, b, fp8))
        assert error < (FP8_BOUND if fp8 else BOUND)[torch.bfloat16], f"relative error {error:.2e}"
