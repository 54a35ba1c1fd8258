"""accel-cuda's probe, platform class and registration, checked without a GPU."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys

import pytest
import torch
from accel_cuda import platform, plugin
from accel_cuda.kernels import triton_available
from accel_cuda.platform import CudaPlatform

from accel.plugins import PluginPolicy, load_registry, run_platform_probes
from accel.schema import CapabilityDescriptor


@pytest.fixture
def no_driver(monkeypatch, tmp_path):
    """No nvidia-smi, no /proc/driver/nvidia, no CUDA_VISIBLE_DEVICES, and a CUDA (not ROCm) torch."""
    monkeypatch.setattr(shutil, "which", lambda cmd, *args, **kwargs: None)
    monkeypatch.setattr(platform, "NVIDIA_DRIVER_DIR", str(tmp_path / "absent"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(torch.version, "hip", None)
    return monkeypatch


def test_probe_absent(no_driver):
    assert platform.probe() is None


@pytest.mark.parametrize("sign", ["nvidia-smi", "proc", "env"])
def test_probe_present(no_driver, tmp_path, sign):
    if sign == "nvidia-smi":
        no_driver.setattr(shutil, "which", lambda cmd, *args, **kwargs: f"/usr/bin/{cmd}")
    elif sign == "proc":
        no_driver.setattr(platform, "NVIDIA_DRIVER_DIR", str(tmp_path))
    else:
        no_driver.setenv("CUDA_VISIBLE_DEVICES", "0")
    name = platform.probe()
    assert name == "accel_cuda.platform:CudaPlatform"
    module, _, attr = name.partition(":")
    assert getattr(importlib.import_module(module), attr) is CudaPlatform


def test_probe_leaves_rocm_to_hygon(no_driver):
    no_driver.setenv("CUDA_VISIBLE_DEVICES", "0")
    no_driver.setattr(torch.version, "hip", "6.2")
    assert platform.probe() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is present")
def test_not_available_without_gpu():
    assert CudaPlatform.is_available() is False


def test_rocm_torch_is_not_cuda(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", "6.2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert CudaPlatform.is_available() is False


def test_peak_memory_bandwidth():
    class Props:
        memory_clock_rate = 3_201_000  # kHz, as an H200 reports
        memory_bus_width = 6016  # bits

    assert platform.peak_memory_bandwidth_gbps(Props()) == pytest.approx(4814.3, abs=0.1)
    assert platform.peak_memory_bandwidth_gbps(object()) is None


def test_registered_by_accel_cuda():
    registry = load_registry()
    assert registry.kernel_backend("cuda").device_type == "cuda"
    assert registry.provider("kernel_backend", "cuda").distribution == "accel-cuda"


def test_probe_entry_point_runs():
    probes = {p.name: p for p in run_platform_probes(PluginPolicy())}
    assert probes["cuda"].distribution == "accel-cuda"
    assert probes["cuda"].error is None


def test_dequant_linear_is_the_cuda_kernel_where_triton_is_installed():
    capability = CapabilityDescriptor(device_name="NVIDIA H100", device_type="cuda")
    expected = "cuda" if triton_available() else "reference"
    assert load_registry().select_kernel("dequant_linear", capability).backend == expected


def test_plugin_import_does_not_import_triton():
    code = (
        "import sys, torch; before = 'triton' in sys.modules; import accel_cuda.plugin; "
        "from accel_cuda.plugin import kernels; kernels(); print(before, 'triton' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = done.stdout.split()
    assert after == before, "loading the plugin or its kernel table imported triton"


KERNEL_OPS = {
    "dequant_linear",
    "w4a16_linear",
    "w4a16_linear_residual",
    "w4a16_linear_rms", "w4a16_linear_rope_kv",
    "w4a16_linear_silu_mul",
    "w4a16_sparse24_linear",
    "w8a8_int8_linear",
    "fp8_linear",
    "cached_attention",
    "kv_cache_write",
    "rms_norm",
    "rotary_embedding",
    "rotary_kv_cache_write",
    "add_rms_norm",
    "silu_and_mul",
    "rms_norm_quant",
    "add_rms_norm_quant",
    "silu_and_mul_quant",
    "w8a8_scaled_mm",
}


def test_kernel_table_has_the_triton_kernels_where_triton_is_installed():
    table = plugin.kernels()
    assert set(table) == (KERNEL_OPS if triton_available() else set())
    capability = CapabilityDescriptor(device_name="NVIDIA H100", device_type="cuda")
    cpu = CapabilityDescriptor(device_name="cpu", device_type="cpu")
    registry = load_registry()
    for op in sorted(KERNEL_OPS):
        assert registry.select_kernel(op, capability).backend == ("cuda" if triton_available() else "reference")
        assert registry.select_kernel(op, cpu).backend == "reference"
