"""The references of the W8A8 activation quantizers fused into RMSNorm / add + RMSNorm / SwiGLU
(accel.runtime.fused_quant_ops) and of the W8A8 GEMM on their codes (ops.w8a8_scaled_mm): the composition of the
existing references bit for bit, close to float64, fp8_linear / w8a8_int8_linear = quantize_activation +
w8a8_scaled_mm exactly, the ops' inputs and judged tensors, and clear errors."""

from __future__ import annotations

import pytest
import torch

from accel.quantization.activation_quant import ActivationQuantArgs, quantize_activation
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.act_ops import silu_and_mul
from accel.runtime.fused_quant_ops import add_rms_norm_quant, rms_norm_quant, silu_and_mul_quant
from accel.runtime.norm_ops import add_rms_norm, rms_norm
from accel.runtime.ops import OPS, fp8_linear, w8a8_int8_linear, w8a8_scaled_mm

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
QUANT_OPS = ["rms_norm_quant", "add_rms_norm_quant", "silu_and_mul_quant"]


def args_for(fp8: bool) -> ActivationQuantArgs:
    return ActivationQuantArgs(type="float" if fp8 else "int")


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (fp8 codes compared as bytes)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.itemsize == 1:
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    return torch.equal(a, b)


def make(shape, dtype, seed=0, weight_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    rows = torch.logspace(-3, 3, torch.Size(shape[:-1]).numel()).reshape(*shape[:-1], 1)
    x = (torch.randn(*shape, generator=gen) * rows).to(dtype)
    residual = (torch.randn(*shape, generator=gen) * rows.flip(0)).to(dtype)
    weight = (1.0 + 0.5 * torch.randn(shape[-1], generator=gen)).to(weight_dtype or dtype)
    return x, residual, weight


def check_float64(codes, scale, truth, fp8):
    """codes * scale within the quantization step of the float64 truth, plus the rounding of y in its dtype (2^-7
    relative at most) and of the scale: int8 half a step of max|y| / 127; e4m3 half an ulp (2^-4 relative) above
    its smallest normal, half a subnormal step below."""
    truth = truth.double()
    amax = truth.abs().amax(-1, keepdim=True)
    assert torch.allclose(scale.double(), amax.clamp_min(1e-12) / (448.0 if fp8 else 127.0), rtol=2**-7, atol=0)
    got = codes.double() * scale.double()
    if fp8:
        bound = truth.abs() * (2**-4 + 2**-6) + scale.double() * 2**-10
    else:
        bound = scale.double() * 0.5 + truth.abs() * 2**-6
    assert bool(((got - truth).abs() <= bound).all())


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight_dtype", [None, torch.float32])
@pytest.mark.parametrize("shape", [(1, 576), (3, 200), (2, 3, 576), (4, 4096), (5,)])
def test_norm_quant_references_are_the_composition_exactly(shape, weight_dtype, dtype, fp8):
    x, residual, weight = make(shape, dtype, seed=shape[-1], weight_dtype=weight_dtype)
    codes, scale = rms_norm_quant(x, weight, 1e-5, fp8)
    want_codes, want_scale = quantize_activation(rms_norm(x, weight, 1e-5), args_for(fp8))
    assert same(codes, want_codes) and same(scale, want_scale)
    assert codes.dtype == (torch.float8_e4m3fn if fp8 else torch.int8) and codes.shape == x.shape
    assert scale.dtype == torch.float32 and scale.shape == (*shape[:-1], 1)
    codes, scale, h = add_rms_norm_quant(x, residual, weight, 1e-5, fp8)
    normed, want_h = add_rms_norm(x, residual, weight, 1e-5)
    want_codes, want_scale = quantize_activation(normed, args_for(fp8))
    assert same(h, want_h) and same(codes, want_codes) and same(scale, want_scale)


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3072), (3, 400), (2, 3, 1152), (5, 74), (2, 2 * 14336), (2,)])
def test_silu_and_mul_quant_reference_is_the_composition_exactly(shape, dtype, fp8):
    gen = torch.Generator().manual_seed(shape[-1])
    x = (torch.randn(*shape, generator=gen) * 4).to(dtype)
    codes, scale = silu_and_mul_quant(x, fp8)
    want_codes, want_scale = quantize_activation(silu_and_mul(x), args_for(fp8))
    assert same(codes, want_codes) and same(scale, want_scale)
    assert codes.shape == (*shape[:-1], shape[-1] // 2) and scale.shape == (*shape[:-1], 1)


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_quant_references_close_to_float64(dtype, fp8):
    x, residual, weight = make((17, 1000), dtype, seed=11)
    x64, w64 = x.double(), weight.double()
    truth = w64 * x64 / (x64.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    check_float64(*rms_norm_quant(x, weight, 1e-5, fp8), truth, fp8)
    h64 = (x + residual).double()  # h is rounded to x's dtype by contract
    truth = w64 * h64 / (h64.pow(2).mean(-1, keepdim=True) + 1e-5).sqrt()
    check_float64(*add_rms_norm_quant(x, residual, weight, 1e-5, fp8)[:2], truth, fp8)
    gen = torch.Generator().manual_seed(12)
    x = (torch.randn(17, 1000, generator=gen) * 3 * torch.logspace(-1, 1, 17)[:, None]).to(dtype)  # no fp16 overflow
    gate, up = x.double().split(500, -1)
    check_float64(*silu_and_mul_quant(x, fp8), gate * torch.sigmoid(gate) * up, fp8)


def test_an_all_zero_row_takes_the_scale_floor():
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    x[1] = 1.0
    for fp8, qmax in ((False, 127.0), (True, 448.0)):
        codes, scale = rms_norm_quant(x, torch.ones(64, dtype=torch.bfloat16), 1e-6, fp8)
        assert float(scale[0, 0]) == pytest.approx(1e-12 / qmax, rel=1e-6) and not codes[0].float().any()
        assert float(codes[1].float().min()) == qmax  # every element of a constant row is its maximum
        codes, scale = silu_and_mul_quant(torch.cat([x, x], -1), fp8)
        assert not codes[0].float().any()


# w8a8_scaled_mm: the GEMM half of the W8A8 linear ops.
def w8a8_case(m, n, k, fp8, dtype, seed, per_tensor=False, lead=None):
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(n, k, generator=gen) * 0.05
    strategy = "tensor" if per_tensor else "channel"
    qw = quantize(weight, WeightQuantArgs(num_bits=8, strategy=strategy, type="float" if fp8 else "int"))
    x = (torch.randn(m, k, generator=gen) * torch.logspace(-2, 2, m)[:, None]).to(dtype)
    bias = (torch.randn(n, generator=gen) * 0.1).to(dtype)
    return x.reshape(*(lead or (m,)), k), qw.q, qw.scale, bias


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("m", "n", "k", "lead", "per_tensor"), [(1, 16, 64, None, False), (6, 33, 200, (2, 3), True)])
def test_linear_ops_are_quantize_activation_then_w8a8_scaled_mm_exactly(m, n, k, lead, per_tensor, dtype, fp8):
    x, q, scale, bias = w8a8_case(m, n, k, fp8, dtype, seed=m + k, per_tensor=per_tensor, lead=lead)
    codes, sx = quantize_activation(x, args_for(fp8))
    for b in (bias, None):
        want = fp8_linear(x, q, scale, None, b) if fp8 else w8a8_int8_linear(x, q, scale, b)
        got = w8a8_scaled_mm(codes, sx, q, scale, b, dtype)
        assert got.dtype == dtype and got.shape == (*x.shape[:-1], n) and torch.equal(got, want)
        assert torch.equal(w8a8_scaled_mm(codes, sx.squeeze(-1), q, scale, b, dtype), want)  # x_scale [...]
    if fp8:  # a static per-tensor input scale: x_scale [1]
        input_scale = (x.float().abs().amax() / 448 * 1.25).reshape(1)
        codes, sx = quantize_activation(x, ActivationQuantArgs(type="float", strategy="tensor", dynamic=False),
                                        input_scale)
        got = w8a8_scaled_mm(codes, sx, q, scale, bias, dtype)
        assert sx.shape == (1,) and torch.equal(got, fp8_linear(x, q, scale, input_scale, bias))


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
def test_w8a8_scaled_mm_matches_float64_in_any_output_dtype(fp8):
    x, q, scale, bias = w8a8_case(5, 40, 256, fp8, torch.bfloat16, seed=3)
    codes, sx = quantize_activation(x, args_for(fp8))
    truth = (codes.double() @ q.double().T) * sx.double() * scale.double().reshape(-1) + bias.double()
    bounds = {torch.float32: 1e-6, torch.bfloat16: 8e-3, torch.float16: 1e-3, torch.float64: 1e-6}
    for out_dtype, bound in bounds.items():
        got = w8a8_scaled_mm(codes, sx, q, scale, bias, out_dtype)
        assert got.dtype == out_dtype
        error = float(((got.double() - truth).norm(dim=-1) / truth.norm(dim=-1)).max())
        assert error < bound, (out_dtype, error)


def test_op_inputs_cover_both_codes_odd_shapes_leading_dims_and_zero_rows():
    for name in QUANT_OPS:
        op = OPS[name]
        made = [make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for make_inputs in op.input_makers]
        assert {args[-1] for args in made} == {False, True}, name  # fp8 last
        assert any(args[0].ndim > 2 for args in made), name
        assert any(not args[0].reshape(-1, args[0].shape[-1])[0].any() or
                   (name == "add_rms_norm_quant" and not (args[0] + args[1]).reshape(-1, args[0].shape[-1])[0].any())
                   for args in made), name
    made = [mk(torch.Generator().manual_seed(0), "cpu", torch.bfloat16) for mk in OPS["w8a8_scaled_mm"].input_makers]
    assert {args[0].dtype for args in made} == {torch.int8, torch.float8_e4m3fn}
    assert any(args[1].shape == args[0].shape[:-1] for args in made) and any(args[0].ndim == 3 for args in made)
    assert all(args[5] == torch.bfloat16 and args[2].dtype == args[0].dtype for args in made)
    rows = made[0][1].reshape(-1)
    assert float(rows.max() / rows.min()) > 1e3  # rows of very different magnitudes


@pytest.mark.parametrize("name", QUANT_OPS)
def test_judged_tensor_counts_codes_and_relative_scale_steps(name):
    """The reference judged on itself: its codes then zeros. A kernel one code off, or its scale 2^-7 relative off,
    is 1 away; a scale twice too large is far outside the tolerance."""
    op = OPS[name]
    args = op.input_makers[1](torch.Generator().manual_seed(0), "cpu", torch.float32)  # e4m3 codes
    codes, scale, *more = op.reference(*args)
    judged = op.result(op.reference, args)
    n = codes.numel()
    assert judged.dtype == torch.float32 and judged.shape == (n + scale.numel() + sum(t.numel() for t in more),)
    assert not judged[n:].any()
    assert torch.equal(judged[:n].abs(), (codes.view(torch.uint8) & 0x7F).float().reshape(-1))

    def off_by_one(*call_args):
        c, s, *rest = op.reference(*call_args)
        bits = c.view(torch.uint8).clone()
        bits.view(-1)[0] += 1  # the next e4m3 value up (or down, for a negative code)
        return (bits.view(torch.float8_e4m3fn), s * (1 + 2**-7), *rest)

    diff = (op.result(off_by_one, args) - judged).abs()
    assert float(diff[:n].max()) == 1.0 and int((diff[:n] > 0).sum()) == 1
    torch.testing.assert_close(diff[n : n + scale.numel()], torch.ones(scale.numel()), rtol=1e-5, atol=0)

    def scale_doubled(*call_args):
        c, s, *rest = op.reference(*call_args)
        return (c, 2 * s, *rest)

    assert float((op.result(scale_doubled, args) - judged).abs().max()) == 128.0 > op.atol * 4


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: rms_norm_quant(torch.randn(3, 8), torch.ones(7), 1e-5, False), r"rms_norm_quant: weight .* \(7,\)"),
        (lambda: rms_norm_quant(torch.ones(3, 8, dtype=torch.int32), torch.ones(8), 1e-5, False),
         "rms_norm_quant: x must be a floating-point tensor"),
        (lambda: rms_norm_quant(torch.randn(3, 8), torch.ones(8), 1e-5, "fp8"), "rms_norm_quant: fp8 must be a bool"),
        (lambda: add_rms_norm_quant(torch.randn(3, 8), torch.randn(3, 7), torch.ones(8), 1e-5, False),
         r"add_rms_norm_quant: residual torch.float32 \(3, 7\) must have x's shape"),
        (lambda: add_rms_norm_quant(torch.randn(3, 8), torch.randn(3, 8), torch.ones(7), 1e-5, False),
         r"add_rms_norm_quant: weight torch.float32 \(7,\)"),
        (lambda: add_rms_norm_quant(torch.randn(3, 8), torch.randn(3, 8), torch.ones(8), 1e-5, 1),
         "add_rms_norm_quant: fp8 must be a bool"),
        (lambda: silu_and_mul_quant(torch.randn(3, 7), False), r"silu_and_mul_quant: x must be .*\[..., 2 \* inter"),
        (lambda: silu_and_mul_quant(torch.randn(3, 8), None), "silu_and_mul_quant: fp8 must be a bool"),
    ],
    ids=["weight", "x", "fp8", "residual", "add-weight", "add-fp8", "silu-x", "silu-fp8"],
)
def test_fused_quant_arguments_off_the_contract_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def _scaled_mm_args():
    codes = torch.zeros(2, 3, 64, dtype=torch.int8)
    return {"x_codes": codes, "x_scale": torch.ones(2, 3, 1), "weight": torch.zeros(8, 64, dtype=torch.int8),
            "weight_scale": torch.ones(8), "bias": torch.zeros(8), "out_dtype": torch.bfloat16}


@pytest.mark.parametrize(
    ("name", "value", "match"),
    [
        ("x_codes", torch.zeros(2, 3, 64), r"x_codes must be int8 or float8_e4m3fn codes \[..., K\], got .*32"),
        ("weight", torch.zeros(8, 64, dtype=torch.float8_e4m3fn), r"weight torch.float8_e4m3fn \(8, 64\) must be \[N"),
        ("weight", torch.zeros(8, 32, dtype=torch.int8), r"weight .* with K = 64"),
        ("x_scale", torch.ones(6, 1), r"x_scale torch.float32 \(6, 1\) must be float32 \[..., 1\] or \[...\]"),
        ("x_scale", torch.ones(2, 3, 1).bfloat16(), r"x_scale torch.bfloat16"),
        ("weight_scale", torch.ones(3), r"weight_scale \(3,\) must be \[N\], \[N, 1\] or \[1\]"),
        ("bias", torch.zeros(7), r"bias torch.float32 \(7,\) must be floating point \[N\], N = 8"),
        ("out_dtype", torch.int32, "out_dtype must be a floating-point dtype"),
        ("out_dtype", torch.float8_e4m3fn, "out_dtype must be a floating-point dtype of 16 bits or more"),
    ],
)
def test_w8a8_scaled_mm_arguments_off_the_contract_are_named(name, value, match):
    args = _scaled_mm_args()
    assert w8a8_scaled_mm(**args).shape == (2, 3, 8)
    args[name] = value
    with pytest.raises(ValueError, match="w8a8_scaled_mm: " + match):
        w8a8_scaled_mm(**args)
