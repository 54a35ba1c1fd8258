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
    torch.testing.assert_close(custom(*args), op.reference(*args), rtol=0, atol=0)
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
