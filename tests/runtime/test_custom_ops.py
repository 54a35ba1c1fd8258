"""accel's kernel ops as torch.library custom ops: schemas, fake shapes, dispatch, and tracing by torch.compile."""

from __future__ import annotations

import pytest
import torch

from accel.runtime import custom_ops
from accel.runtime.ops import OPS

ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
CASES = [(name, i) for name, op in OPS.items() for i in range(len(op.input_makers))]


@pytest.mark.parametrize(("name", "case"), CASES, ids=[f"{name}-{i}" for name, i in CASES])
def test_custom_op_runs_the_reference_on_cpu_and_passes_opcheck(name, case):
    op = OPS[name]
    args = op.input_makers[case](torch.Generator().manual_seed(case), "cpu", torch.bfloat16)
    custom = getattr(torch.ops.accel, name)
    torch.testing.assert_close(op.result(custom, args), op.result(op.reference, args), rtol=0, atol=0)
    fp8 = any(isinstance(a, torch.Tensor) and a.dtype == torch.float8_e4m3fn for a in args)
    # torch's schema check compares inputs before and after with ops that fp8 tensors lack on the CPU.
    checks = ALL_CHECKS[2:] if fp8 else ALL_CHECKS
    torch.library.opcheck(custom, args, test_utils=checks)


def test_every_op_is_a_custom_op_and_listed():
    assert set(OPS) <= set(custom_ops.__all__)
    for name in OPS:
        assert isinstance(getattr(custom_ops, name), torch._library.custom_ops.CustomOpDef)


def test_kernel_choice_on_cpu_is_the_reference():
    for name in OPS:
        choice = custom_ops.kernel_choice(name, "cpu")
        assert choice.backend == "reference" and choice.impl is OPS[name].reference


def test_torch_compile_traces_through_the_ops():
    op = OPS["cached_attention"]
    args = op.input_makers[3](torch.Generator().manual_seed(0), "cpu", torch.float32)  # int8 cache, T = 3
    x, weight, scale, bias = OPS["w8a8_int8_linear"].make_inputs(torch.Generator().manual_seed(1), "cpu", torch.float32)

    def step(*attn_args):
        out = torch.ops.accel.cached_attention(*attn_args)
        return out.sum() + torch.ops.accel.w8a8_int8_linear(x, weight, scale, bias).sum()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(*args), step(*args))


def test_torch_compile_traces_through_the_block_sparse_op():
    x, blocks, block_index, n, bias = OPS["block_sparse_linear"].make_inputs(
        torch.Generator().manual_seed(0), "cpu", torch.float32
    )

    def step(x):
        return torch.ops.accel.block_sparse_linear(x, blocks, block_index, n, bias).relu()

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), step(x))


def test_torch_compile_traces_through_the_norm_op():
    """rms_norm between a residual add and a product, leading dims [2, 3, H] and a float32 weight (promoting)."""
    x, weight, eps = OPS["rms_norm"].variants[1](torch.Generator().manual_seed(0), "cpu", torch.bfloat16)

    def step(x, residual):
        return torch.ops.accel.rms_norm(x + residual, weight, eps) * 2

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, x), step(x, x), rtol=0, atol=0)
    assert compiled(x, x).dtype == torch.float32


@pytest.mark.parametrize("case", [0, 1], ids=["prefill", "decode"])  # a [1, T, D] table; [B, 1, D] per row
def test_torch_compile_traces_through_the_rope_op(case):
    """rotary_embedding on q / k viewed from a fused qkv output inside the graph, as the attention layer calls it:
    compiled, the same bits as the reference run eagerly."""
    q, k, cos, sin = OPS["rotary_embedding"].input_makers[case](torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
    b, t, h, d = q.shape
    hkv = k.shape[2]
    qkv = torch.cat([q.reshape(b, t, -1), k.reshape(b, t, -1), k.reshape(b, t, -1)], dim=-1)

    def step(qkv, cos, sin):
        q, k, v = qkv.split((h * d, hkv * d, hkv * d), dim=-1)
        q, k = torch.ops.accel.rotary_embedding(q.view(b, t, h, d), k.view(b, t, hkv, d), cos, sin)
        return q.transpose(1, 2) * 2, k + v.view(b, t, hkv, d)

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    q_rot, k_rot = OPS["rotary_embedding"].reference(q, k, cos, sin)
    got_q, got_k = compiled(qkv, cos, sin)
    assert torch.equal(got_q, q_rot.transpose(1, 2) * 2) and torch.equal(got_k, k_rot + k)


@pytest.mark.parametrize("case", [0, 2, 6], ids=["none", "int8", "int4"])  # None scales; a scale; scale and zero
def test_torch_compile_functionalizes_the_cache_write(case):
    """kv_cache_write mutates its (Optional) stores: compiled, the stores change exactly as in eager mode, and a
    read after the write inside the same graph sees the new tokens."""
    op = OPS["kv_cache_write"]
    args = op.input_makers[case](torch.Generator().manual_seed(0), "cpu", torch.float32)
    eager, compiled_args = ([a.clone() if isinstance(a, torch.Tensor) else a for a in args] for _ in range(2))

    def step(*write_args):
        torch.ops.accel.kv_cache_write(*write_args)
        return write_args[3].float().sum()  # the K codes, read after the write

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(*compiled_args), step(*eager))
    for got, want in zip(compiled_args, eager, strict=True):
        if isinstance(got, torch.Tensor):
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert not torch.equal(op.observe(tuple(eager)), op.observe(args))  # the write happened


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_compile_traces_through_the_fused_decoder_ops(dtype):
    """A decoder layer's tail as the model would run it: add_rms_norm (both results used: the normed h feeds the MLP,
    h the residual), gate_up, silu_and_mul, down, the next residual; leading dims [2, 3, H]. Compiled with fullgraph,
    the same bits as the separate torch expressions they replace run eagerly."""
    gen = torch.Generator().manual_seed(0)
    x, attn, weight, eps = OPS["add_rms_norm"].variants[1](gen, "cpu", dtype)
    hidden, inter = x.shape[-1], 96
    gate_up = (torch.randn(2 * inter, hidden, generator=gen) * hidden**-0.5).to(dtype)
    down = (torch.randn(hidden, inter, generator=gen) * inter**-0.5).to(dtype)

    def fused(x, attn):
        normed, h = torch.ops.accel.add_rms_norm(attn, x, weight, eps)
        return h + torch.ops.accel.silu_and_mul(normed.to(dtype) @ gate_up.T) @ down.T

    def separate(x, attn):
        h = attn + x
        normed = OPS["rms_norm"].reference(h, weight, eps)
        gate, up = (normed.to(dtype) @ gate_up.T).split(inter, -1)
        return h + (torch.nn.functional.silu(gate) * up) @ down.T

    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    got = compiled(x, attn)
    assert got.dtype == dtype and torch.equal(got, separate(x, attn)) and torch.equal(got, fused(x, attn))


@pytest.mark.parametrize("fp8", [False, True], ids=["int8", "fp8"])
def test_torch_compile_traces_through_the_fused_quant_ops(fp8):
    """A W8A8 decoder layer's MLP with the activation quantization fused, as the model would run it:
    add_rms_norm_quant (the codes feed gate_up, h the residual), w8a8_scaled_mm, silu_and_mul_quant, w8a8_scaled_mm
    (down), the next residual; leading dims [2, 3, H], bf16. Compiled with fullgraph, the same bits as the unfused
    W8A8 path (add_rms_norm, the W8A8 linear op, silu_and_mul, the W8A8 linear op) run eagerly."""
    from accel.quantization.weight_quant import WeightQuantArgs, quantize

    gen = torch.Generator().manual_seed(0)
    x, attn, weight, eps = OPS["add_rms_norm"].variants[1](gen, "cpu", torch.bfloat16)
    weight = weight.bfloat16()
    hidden, inter = x.shape[-1], 96
    args = WeightQuantArgs(num_bits=8, strategy="channel", type="float" if fp8 else "int")
    gate_up = quantize(torch.randn(2 * inter, hidden, generator=gen) * hidden**-0.5, args)
    down = quantize(torch.randn(hidden, inter, generator=gen) * inter**-0.5, args)
    linear_op = OPS["fp8_linear" if fp8 else "w8a8_int8_linear"].reference

    def linear(a, qw):
        return linear_op(a, qw.q, qw.scale, None, None) if fp8 else linear_op(a, qw.q, qw.scale, None)

    def fused(x, attn):
        codes, scale, h = torch.ops.accel.add_rms_norm_quant(attn, x, weight, eps, fp8)
        gu = torch.ops.accel.w8a8_scaled_mm(codes, scale, gate_up.q, gate_up.scale, None, torch.bfloat16)
        codes, scale = torch.ops.accel.silu_and_mul_quant(gu, fp8)
        return h + torch.ops.accel.w8a8_scaled_mm(codes, scale, down.q, down.scale, None, torch.bfloat16)

    def unfused(x, attn):
        normed, h = OPS["add_rms_norm"].reference(attn, x, weight, eps)
        return h + linear(OPS["silu_and_mul"].reference(linear(normed, gate_up)), down)

    compiled = torch.compile(fused, backend="aot_eager", fullgraph=True)
    got = compiled(x, attn)
    assert got.dtype == torch.bfloat16 and got.shape == x.shape
    assert torch.equal(got, unfused(x, attn)) and torch.equal(got, fused(x, attn))
