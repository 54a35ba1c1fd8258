"""accel-hygon's kernel table without a DCU: which kernels it offers with and without accel-cuda / Triton, that
they are accel-cuda's Triton kernels (called through, argument for argument), and that the W4A16 choice carries
accel-cuda's load-time weight permutation. The Triton kernels themselves are checked by accel-cuda's tests (under
Triton's interpreter here, on a GPU there); nothing here ran on a DCU."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from accel_hygon import kernels
from accel_hygon.plugin import plugin

from accel.runtime.ops import OPS
from accel.schema import CapabilityDescriptor

DCU = CapabilityDescriptor(device_name="K100_AI", device_type="dcu")


def hide(monkeypatch, *modules: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in modules else real(name, *a))


@pytest.mark.parametrize("missing", ["accel_cuda", "triton"])
def test_no_triton_kernels_without_accel_cuda_and_triton(monkeypatch, missing):
    hide(monkeypatch, missing)
    assert kernels.kernels() == {}
    assert plugin.accel_select_kernel("w4a16_linear", DCU) is None  # the reference answers


@pytest.mark.skipif(not kernels.triton_kernels_available(), reason="needs accel-cuda and Triton installed")
def test_triton_kernels_with_accel_cuda_and_triton():
    assert set(kernels.kernels()) == {"w4a16_linear", "cached_attention"}
    choice = plugin.accel_select_kernel("w4a16_linear", DCU)
    assert choice.backend == "hygon" and choice.prepare is kernels.w4a16_prepare
    assert plugin.accel_select_kernel("cached_attention", DCU).prepare is None
    assert plugin.accel_select_kernel("w8a8_int8_linear", DCU) is None  # int8 dots unconfirmed on DCUs


@pytest.mark.parametrize(("wrapper", "target"), [
    (kernels.w4a16_linear, "w4a16_linear"), (kernels.w4a16_prepare, "w4a16_prepare"),
    (kernels.cached_attention, "cached_attention"),
])
def test_wrappers_call_accel_cuda_with_the_same_arguments(monkeypatch, wrapper, target):
    cuda_kernels = pytest.importorskip("accel_cuda.kernels")
    seen = []
    monkeypatch.setattr(cuda_kernels, target, lambda *args, **kwargs: seen.append((args, kwargs)) or "result")
    assert wrapper(1, 2, 3, 4, 5) == "result"
    assert seen == [((1, 2, 3, 4, 5), {})]


def test_cpu_inputs_take_accel_cudas_reference_path():
    """On CPU tensors accel-cuda's attention runs the reference (its own fallback), so the DCU path is portable."""
    pytest.importorskip("accel_cuda.kernels")
    pytest.importorskip("triton", reason="accel-cuda's attention module imports Triton, even for its CPU fallback")
    op = OPS["cached_attention"]
    args = op.make_inputs(torch.Generator().manual_seed(0), "cpu", torch.float32)
    torch.testing.assert_close(kernels.cached_attention(*args), op.reference(*args))
