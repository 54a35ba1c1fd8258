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
