"""The kernel ops' references (accel.runtime.ops) against direct float64 computations."""

from __future__ import annotations

import math

import pytest
import torch

from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.kernels.reference import dequant_linear
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.kv_ops import KV_FORMATS, KVTensors, kv_dequantize
from accel.runtime.ops import OPS, block_sparse_linear, block_values, fp8_linear, w4a16_linear, w8a8_int8_linear
from accel.runtime.packing import pack_int32

# Relative error bound of the output, ||got - expected|| / ||expected||: float32 arithmetic lands far under 1e-5;
# the bf16 / fp16 output rounding alone is about 2^-9 / 2^-12 relative.
BOUND = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 2e-3}


def make_case(m: int, n: int, k: int, group: int, symmetric: bool, dtype: torch.dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    groups = math.ceil(k / group) if group > 0 else 1
    q = torch.randint(-8, 8, (n, k), generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen) * 0.05 + 0.01).to(dtype)
    zero_point = None if symmetric else torch.randint(-8, 8, (n, groups), generator=gen, dtype=torch.int8)
    x = torch.randn(m, k, generator=gen).to(dtype)
    return x, q, scale, zero_point


def expected_float64(x, q, scale, zero_point, group):
    k = q.shape[1]
    cols = torch.arange(k) // (group if group > 0 else k)
    weight = q.double()
    if zero_point is not None:
        weight = weight - zero_point.double()[:, cols]
    weight = weight * scale.double()[:, cols]
    return x.double() @ weight.T


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize(
    ("m", "n", "k", "group"),
    [(1, 16, 64, 32), (3, 72, 200, 64), (5, 33, 256, 128), (2, 8, 96, -1), (4, 40, 136, 48)],
)
def test_reference_matches_float64(m, n, k, group, symmetric, dtype):
    x, q, scale, zero_point = make_case(m, n, k, group, symmetric, dtype, seed=m * 1000 + k)
    got = w4a16_linear(x, pack_int32(q, 4), scale, zero_point, group)
    expected = expected_float64(x, q, scale, zero_point, group)
    assert got.dtype == dtype and got.shape == (m, n)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def test_reference_keeps_leading_dims_and_matches_dequant_linear():
    x, q, scale, zero_point = make_case(6, 24, 160, 32, False, torch.float32, seed=7)
    got = w4a16_linear(x.reshape(2, 3, 160), pack_int32(q, 4), scale, zero_point, 32)
    assert got.shape == (2, 3, 24)
    torch.testing.assert_close(got.reshape(6, 24), dequant_linear(x, q, scale, zero_point, 32))


def test_reference_rejects_mismatched_shapes():
    x, q, scale, zero_point = make_case(2, 16, 64, 32, True, torch.float32, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        w4a16_linear(x, pack_int32(q, 4), scale[:, :1], zero_point, 32)
    with pytest.raises(ValueError, match="do not fit"):
        w4a16_linear(x[:, :56], pack_int32(q, 4), scale, zero_point, 32)


def test_op_inputs_cover_the_asymmetric_partial_group_case():
    op = OPS["w4a16_linear"]
    x, packed, scale, zero_point, group = op.make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
    k = x.shape[1]
    assert k % 8 == 0 and k % group != 0, "in_features must pack into words and leave a partial last group"
    assert packed.dtype == torch.int32 and packed.shape == (scale.shape[0], k // 8)
    assert scale.dtype == x.dtype and scale.shape[1] == math.ceil(k / group)
    assert zero_point is not None and zero_point.dtype == torch.int8
    assert torch.isfinite(op.reference(x, packed, scale, zero_point, group)).all()


# W8A8 and cached attention: references against direct float64 definitions.


def w8a8_float64(x, weight_q, weight_scale, bias, qmax, input_scale=None):
    """Quantize x per token (or with the static scale) in float64, then the float64 product, scaled."""
    xd = x.double()
    if input_scale is None:
        scale = xd.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / qmax
    else:
        scale = input_scale.double().reshape(1)
    scaled = (x.float() / scale.float()).double()  # the division activation_quant does, in fp32
    if qmax == 127.0:
        codes = torch.round(scaled).clamp(-127, 127)
    else:
        codes = scaled.clamp(-448, 448).to(torch.float8_e4m3fn).double()
    y = codes @ weight_q.double().T * scale * weight_scale.double().reshape(-1)
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("m", "n", "k", "bias", "per_tensor"), [(1, 16, 64, True, False), (7, 33, 200, False, True)])
def test_w8a8_int8_reference_matches_float64(m, n, k, bias, per_tensor, dtype):
    gen = torch.Generator().manual_seed(m * 100 + k)
    x = (torch.randn(m, k, generator=gen) * torch.logspace(-2, 1, m)[:, None]).to(dtype)
    weight_q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    weight_scale = torch.rand(1 if per_tensor else n, 1, generator=gen) * 1e-3 + 1e-4
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    got = w8a8_int8_linear(x, weight_q, weight_scale, b)
    assert got.dtype == dtype and got.shape == (m, n)
    expected = w8a8_float64(x, weight_q, weight_scale, b, 127.0)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static"])
def test_fp8_linear_reference_matches_float64(static, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(5, 96, generator=gen).to(dtype)
    weight = (torch.randn(24, 96, generator=gen) * 30).to(torch.float8_e4m3fn)
    weight_scale = torch.rand(24, generator=gen) * 1e-2
    input_scale = (x.float().abs().amax() / 448 * 1.5).reshape(1) if static else None
    got = fp8_linear(x, weight, weight_scale, input_scale, None)
    expected = w8a8_float64(x, weight, weight_scale, None, 448.0, input_scale)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize(
    ("fp8", "static"), [(False, False), (True, False), (True, True)], ids=["int8", "fp8", "fp8-static"]
)
def test_w8a8_ops_agree_with_quant_linear(fp8, static):
    """QuantLinear's portable forward (fake-quantized activations, dequantized weights) is the same function."""
    gen = torch.Generator().manual_seed(5)
    weight = torch.randn(40, 128, generator=gen, dtype=torch.float64) * 0.05
    qw = quantize(weight, WeightQuantArgs(num_bits=8, strategy="channel", type="float" if fp8 else "int"))
    x = torch.randn(2, 3, 128, generator=gen, dtype=torch.float64) * 2
    bias = torch.randn(40, generator=gen, dtype=torch.float64)
    input_scale = (x.abs().amax() / (448.0 if fp8 else 127.0) * 1.1).reshape(1) if static else None
    kind = "float" if fp8 else "int"
    act = ActivationQuantArgs(type=kind, strategy="tensor" if static else "token", dynamic=not static)
    layer = QuantLinear(qw, bias=bias, act_args=act, input_scale=input_scale)
    got = fp8_linear(x, qw.q, qw.scale, input_scale, bias) if fp8 else w8a8_int8_linear(x, qw.q, qw.scale, bias)
    assert got.shape == (2, 3, 40)
    torch.testing.assert_close(got, layer(x), rtol=1e-6, atol=1e-6)


def test_w8a8_references_reject_mismatched_shapes():
    x = torch.randn(2, 64)
    with pytest.raises(ValueError, match="do not fit"):
        w8a8_int8_linear(x, torch.zeros(8, 32, dtype=torch.int8), torch.ones(8))
    with pytest.raises(ValueError, match="weight_scale"):
        w8a8_int8_linear(x, torch.zeros(8, 64, dtype=torch.int8), torch.ones(3))
    with pytest.raises(ValueError, match="do not fit"):
        fp8_linear(x, torch.zeros(8, 64, dtype=torch.int8), torch.ones(8))


def attention_float64(q, keys, values, seq_lens):
    """Direct definition on dequantized K/V, one (row, head, query) at a time."""
    b, hq, t, d = q.shape
    group = hq // keys.shape[1]
    out = torch.zeros(b, hq, t, d, dtype=torch.float64)
    for row in range(b):
        for head in range(hq):
            for i in range(t):
                visible = int(seq_lens[row]) - t + i + 1
                k, v = keys[row, head // group, :visible].double(), values[row, head // group, :visible].double()
                weights = torch.softmax(k @ q[row, head, i].double() / math.sqrt(d), dim=0)
                out[row, head, i] = weights @ v
    return out


@pytest.mark.parametrize("case", range(len(OPS["cached_attention"].input_makers)))
def test_cached_attention_reference_matches_float64(case):
    op = OPS["cached_attention"]
    args = op.input_makers[case](torch.Generator().manual_seed(case), "cpu", torch.float32)
    q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale = args
    assert sm_scale == pytest.approx(1 / math.sqrt(q.shape[-1]))
    keys = kv_dequantize(KVTensors(k_codes, k_scale, k_zero), fmt)
    values = kv_dequantize(KVTensors(v_codes, v_scale, v_zero), fmt)
    got = op.reference(*args)
    expected = attention_float64(q, keys, values, seq_lens)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < 1e-5, f"{fmt}: relative error {error:.2e}"


def test_op_inputs_cover_every_kv_format_gqa_and_ragged_rows():
    op = OPS["cached_attention"]
    seen = set()
    for make_inputs in op.input_makers:
        args = make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
        q, k_codes, seq_lens, fmt = args[0], args[1], args[7], args[8]
        seen.add((fmt, q.shape[2]))
        assert q.shape[1] > k_codes.shape[1], "query heads must share KV heads (GQA)"
        assert len(set(seq_lens.tolist())) == len(seq_lens), "rows must hold different lengths"
        assert int(seq_lens.max()) == k_codes.shape[2] and int(seq_lens.min()) == q.shape[2]
    assert seen == {(fmt, t) for fmt in KV_FORMATS for t in (1, 3)}


# Block-sparse linear: the kept-blocks reference against the float64 product with the dense-with-zeros weight.


def block_sparse_case(m, n, k, block, fraction, dtype, seed, bias=True):
    """x, a random block mask keeping about `fraction` of the blocks (edge blocks partial), the op's arguments, and
    the float64 product with the masked dense weight, computed without the op's block layout."""
    gen = torch.Generator().manual_seed(seed)
    br, bc = block
    keep = torch.rand(math.ceil(n / br), math.ceil(k / bc), generator=gen) < fraction  # [R, C]
    mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:n, :k]
    weight = torch.randn(n, k, generator=gen, dtype=torch.float64) * mask
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    block_index = keep.nonzero().to(torch.int32)
    args = (x, block_values(weight, block_index, block).to(dtype), block_index, n, b)
    expected = x.double() @ weight.to(dtype).double().T + (0 if b is None else b.double())
    return args, expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("m", "n", "k", "block", "fraction"),
    [
        (1, 128, 256, (32, 32), 0.5),  # decode, whole blocks
        (6, 96, 64, (16, 32), 0.3),  # non-square blocks
        (3, 76, 200, (16, 32), 0.5),  # partial edge blocks on both sides
        (1, 70, 45, (64, 64), 1.0),  # every block kept, one partial block row and column
        (4, 33, 17, (8, 8), 0.0),  # no block kept: the bias alone
        (2, 40, 24, (1, 1), 0.6),  # 1x1 blocks: unstructured
    ],
)
def test_block_sparse_reference_matches_float64(m, n, k, block, fraction, dtype):
    args, expected = block_sparse_case(m, n, k, block, fraction, dtype, seed=m * 100 + n)
    got = block_sparse_linear(*args)
    assert got.dtype == dtype and got.shape == (m, n)
    error = float((got.double() - expected).norm() / expected.norm())
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def test_block_sparse_reference_keeps_leading_dims_and_runs_without_bias():
    (x, blocks, block_index, n, _), expected = block_sparse_case(6, 48, 96, (16, 16), 0.5, torch.float32, 1, False)
    got = block_sparse_linear(x.reshape(2, 3, 96), blocks, block_index.long(), n)
    assert got.shape == (2, 3, 48)
    torch.testing.assert_close(got.reshape(6, 48), expected.float())
    empty = block_sparse_linear(x, blocks[:0], block_index[:0], n)
    assert torch.equal(empty, torch.zeros(6, 48))


def test_block_sparse_reference_rejects_mismatched_arguments():
    (x, blocks, block_index, n, bias), _ = block_sparse_case(2, 32, 64, (16, 16), 0.5, torch.float32, 0)
    with pytest.raises(ValueError, match="in x's dtype"):
        block_sparse_linear(x, blocks.to(torch.bfloat16), block_index, n, bias)
    with pytest.raises(ValueError, match="block_index"):
        block_sparse_linear(x, blocks, block_index[:-1], n, bias)
    with pytest.raises(ValueError, match="bias"):
        block_sparse_linear(x, blocks, block_index, n, bias[:-1])
    with pytest.raises(ValueError, match=r"\[nb, br, bc\]"):
        block_sparse_linear(x, blocks.flatten(1), block_index, n, bias)
