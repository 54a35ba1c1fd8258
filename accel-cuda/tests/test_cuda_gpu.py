"""accel-cuda on a real GPU: capability() reads the device, and the reference kernel runs on it."""

from __future__ import annotations

import re

import pytest
import torch
from accel_cuda.platform import CudaPlatform

from accel.plugins import load_registry
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_capability_reads_the_gpu():
    capability = CudaPlatform.capability()
    major, minor = torch.cuda.get_device_capability()
    assert capability.device_name
    assert capability.compute_capability is not None
    assert re.fullmatch(r"\d+\.\d+", capability.compute_capability)
    assert capability.total_memory_bytes > 0
    assert 0 < capability.available_memory_bytes <= capability.total_memory_bytes
    assert ("fp8_e4m3" in capability.supported_dtypes) == ((major, minor) >= (8, 9))
    assert ("w8a8-fp8" in capability.supported_quant_formats) == ((major, minor) >= (8, 9))
    assert ("kv-int8" in capability.supported_quant_formats) == ((major, minor) >= (8, 0))
    assert {"w4a16", "w8a16"} <= set(capability.supported_quant_formats)
    assert "w4a16_linear" in capability.supported_kernels  # Triton is on the GPU machines


def test_dequant_linear_runs_on_the_gpu():
    """accel-cuda's dequant_linear on the conformance inputs (fp32, group 64, K=200: the reference inside it)."""
    choice = load_registry().select_kernel("dequant_linear", CudaPlatform.capability())
    op = OPS["dequant_linear"]
    args = op.make_inputs(torch.Generator().manual_seed(0), "cuda", torch.float32)
    expected = op.reference(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    got = choice.impl(*args)
    assert choice.backend == "cuda" and got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), expected, rtol=op.rtol, atol=op.atol)
