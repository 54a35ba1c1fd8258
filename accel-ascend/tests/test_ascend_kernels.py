"""accel-ascend's kernels without an NPU: the portable path with torch_npu absent, and the vendor path against a
stand-in torch_npu (conftest.FakeTorchNpu) that takes the documented signatures and computes the documented
formulas, so argument names, layouts (transposes, int4 packing, antiquant offset sign, scale shapes) and the
fallback rules are all checked. What this cannot check is torch_npu itself: nothing here ran on an NPU."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
from accel_ascend import kernels
from accel_ascend.plugin import plugin

from accel.runtime.ops import OPS
from accel.schema import CapabilityDescriptor

NPU = CapabilityDescriptor(device_name="Ascend910B3", device_type="npu")
CASES = [(name, index) for name, op in OPS.items() if name in kernels.KERNELS for index in range(len(op.input_makers))]


def inputs(op: str, index: int, dtype: torch.dtype) -> tuple:
    return OPS[op].input_makers[index](torch.Generator().manual_seed(index), "cpu", dtype)


def check_close(got: torch.Tensor, op: str, args: tuple, scale: float) -> None:
    expected = OPS[op].reference(*args).float()
    assert got.shape == expected.shape
    torch.testing.assert_close(got.float(), expected, rtol=OPS[op].rtol * scale, atol=OPS[op].atol * scale)


@pytest.mark.skipif(importlib.util.find_spec("torch_npu") is not None, reason="torch_npu is installed")
@pytest.mark.parametrize(("op", "index"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_portable_path_without_torch_npu(op, index, dtype):
    """With torch_npu absent, every kernel on CPU tensors is the reference (and never imports torch_npu)."""
    args = inputs(op, index, dtype)
    check_close(kernels.KERNELS[op](*args), op, args, 1.0 if dtype == torch.float32 else 4.0)
    assert "torch_npu" not in sys.modules


def vendor_covers(op: str, args: tuple) -> bool:
    """Which conformance inputs the vendor operators take (the module docstring's rules)."""
    if op == "cached_attention":
        q, fmt = args[0], args[8]
        return q.shape[2] == 1 and fmt in ("none", "int8")
    return True


@pytest.mark.parametrize(("op", "index"), CASES)
def test_vendor_path_matches_reference(fake_npu, op, index):
    args = inputs(op, index, torch.bfloat16)
    got = kernels.KERNELS[op](*args)
    check_close(got, op, args, 4.0)
    assert bool(fake_npu.calls) == vendor_covers(op, args), fake_npu.calls


def test_float32_stays_on_the_reference(fake_npu):
    for op in kernels.KERNELS:
        args = inputs(op, 0, torch.float32)
        check_close(kernels.KERNELS[op](*args), op, args, 1.0)
    assert fake_npu.calls == []


def test_w4a16_calls_the_documented_operators(fake_npu):
    args = inputs("w4a16_linear", 0, torch.bfloat16)
    kernels.w4a16_linear(*args)
    assert fake_npu.calls == ["npu_convert_weight_to_int4pack", "npu_weight_quant_batchmatmul"]


def test_w4a16_prepare_packs_once_per_output_row(fake_npu):
    x, packed, scale, zero, group = inputs("w4a16_linear", 0, torch.bfloat16)
    (vendor_packed, *rest), extra = kernels.w4a16_prepare(packed, scale, zero, group)
    assert extra == {"npu_int4pack": True} and vendor_packed.shape == packed.shape
    fake_npu.calls.clear()
    got = kernels.w4a16_linear(x, vendor_packed, *rest, **extra)
    assert fake_npu.calls == ["npu_weight_quant_batchmatmul"]  # no re-packing per call
    check_close(got, "w4a16_linear", (x, packed, scale, zero, group), 4.0)
    # Fused layers concatenate prepared weights row-wise: the halves must compute the two halves of the output.
    top = kernels.w4a16_linear(x, vendor_packed[:40], scale[:40], zero[:40], group, **extra)
    torch.testing.assert_close(top, got[:, :40])


@pytest.mark.parametrize("group", [48, 200])
def test_group_sizes_the_operator_refuses_stay_on_the_reference(fake_npu, group):
    from accel.quantization.weight_quant import WeightQuantArgs, quantize

    weight = torch.randn(16, 200, generator=torch.Generator().manual_seed(0))
    qw = quantize(weight, WeightQuantArgs(num_bits=8, strategy="group", group_size=group))
    x = torch.randn(3, 200, dtype=torch.bfloat16)
    args = (x, qw.q, qw.scale.to(torch.bfloat16), None, group)
    check_close(kernels.dequant_linear(*args), "dequant_linear", args, 4.0)
    assert fake_npu.calls == []


def test_prepared_weights_refuse_a_non_npu_input(fake_npu):
    x, packed, scale, zero, group = inputs("w4a16_linear", 0, torch.bfloat16)
    (vendor_packed, *rest), extra = kernels.w4a16_prepare(packed, scale, zero, group)
    with pytest.raises(ValueError, match="repacked for the NPU"):
        kernels.w4a16_linear(x.float(), vendor_packed, *rest, **extra)


def test_selection_carries_the_prepare_step():
    choice = plugin.accel_select_kernel("w4a16_linear", NPU)
    assert choice is not None and choice.backend == "ascend" and choice.prepare is kernels.w4a16_prepare
    assert plugin.accel_select_kernel("w8a8_int8_linear", NPU).prepare is None
    assert plugin.accel_select_kernel("fp8_linear", NPU) is None  # no fp8 on Ascend: the reference answers
    assert plugin.accel_select_kernel("w4a16_linear", NPU.model_copy(update={"device_type": "cuda"})) is None


def test_native_variants_are_declared():
    assert kernels.cached_attention.native_variants == {"16-bit", "kv-int8"}
    assert "w8a8-int8" in kernels.w8a8_int8_linear.native_variants
