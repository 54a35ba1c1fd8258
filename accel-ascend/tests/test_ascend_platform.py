"""accel-ascend's probe, platform class and registration, checked without an NPU."""

from __future__ import annotations

import glob
import importlib
import importlib.util
import shutil
import sys
import types
from importlib.machinery import ModuleSpec

import pytest
import torch
from accel_ascend import platform
from accel_ascend.platform import AscendPlatform

from accel.plugins import PluginPolicy, load_registry, run_platform_probes
from accel.schema import CapabilityDescriptor

VENDOR = "torch_npu"
HAS_VENDOR = importlib.util.find_spec(VENDOR) is not None


def vendor_found(monkeypatch, found: bool) -> None:
    """Make find_spec report torch_npu as installed or not, leaving every other module alone."""
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == VENDOR:
            return ModuleSpec(VENDOR, None) if found else None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def absent(monkeypatch):
    """No torch_npu to find, no npu-smi, no /dev/davinci*, no Ascend device variables."""
    vendor_found(monkeypatch, False)
    monkeypatch.setattr(shutil, "which", lambda cmd, *args, **kwargs: None)
    monkeypatch.setattr(glob, "glob", lambda pattern, *args, **kwargs: [])
    for name in platform.DEVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_probe_absent(absent):
    assert platform.probe() is None
    assert platform.signs() == []


@pytest.mark.parametrize("sign", ["torch_npu", "npu-smi", "nodes", "ASCEND_RT_VISIBLE_DEVICES"])
def test_probe_present(absent, sign):
    if sign == "torch_npu":
        vendor_found(absent, True)
    elif sign == "npu-smi":
        absent.setattr(shutil, "which", lambda cmd, *args, **kwargs: f"/usr/local/bin/{cmd}" if cmd == sign else None)
    elif sign == "nodes":
        absent.setattr(glob, "glob", lambda pattern, *args, **kwargs: ["/dev/davinci0"] if "davinci" in pattern else [])
    else:
        absent.setenv(sign, "0,1")
    assert len(platform.signs()) == 1
    name = platform.probe()
    assert name == "accel_ascend.platform:AscendPlatform"
    module, _, attr = name.partition(":")
    assert getattr(importlib.import_module(module), attr) is AscendPlatform


@pytest.mark.skipif(HAS_VENDOR, reason="torch_npu is installed; something may have imported it")
def test_probe_and_plugin_do_not_import_torch_npu(monkeypatch):
    vendor_found(monkeypatch, True)
    importlib.import_module("accel_ascend.plugin")
    platform.probe()
    assert VENDOR not in sys.modules


@pytest.mark.skipif(HAS_VENDOR, reason="torch_npu is installed; an NPU may be present")
def test_not_available_without_torch_npu():
    assert AscendPlatform.is_available() is False


def test_registered_by_accel_ascend():
    registry = load_registry()
    assert registry.kernel_backend("ascend").device_type == "npu"
    assert registry.provider("kernel_backend", "ascend").distribution == "accel-ascend"


def test_probe_entry_point_runs():
    probes = {p.name: p for p in run_platform_probes(PluginPolicy())}
    assert probes["ascend"].distribution == "accel-ascend"
    assert probes["ascend"].error is None


def test_kernel_selection_on_an_npu():
    capability = CapabilityDescriptor(device_name="Ascend910B2", device_type="npu")
    registry = load_registry()
    assert registry.select_kernel("dequant_linear", capability).backend == "ascend"
    assert registry.select_kernel("fp8_linear", capability).backend == "reference"


def fake_npu_runtime(monkeypatch, device_name: str) -> None:
    """torch_npu importable and torch.npu answering as a one-NPU runtime of that name (64 GiB, 60 free)."""
    runtime = types.SimpleNamespace(
        is_available=lambda: True, current_device=lambda: 0, get_device_name=lambda index=None: device_name,
        mem_get_info=lambda index=None: (60 * 2**30, 64 * 2**30), is_bf16_supported=lambda: True,
    )
    monkeypatch.setitem(sys.modules, "torch_npu", types.ModuleType("torch_npu"))
    monkeypatch.setattr(torch, "npu", runtime, raising=False)


@pytest.mark.parametrize(("device_name", "family"), [("Ascend910B3", "ascend-910b"), ("Ascend910_9391", None)])
def test_capability_lays_the_runtime_over_the_chip_family(monkeypatch, device_name, family):
    from accel_ascend.chips import CHIPS

    fake_npu_runtime(monkeypatch, device_name)
    assert AscendPlatform.is_available() is True
    capability = AscendPlatform.capability()
    assert capability.device_name == device_name and capability.total_memory_bytes == 64 * 2**30
    assert capability.available_memory_bytes == 60 * 2**30
    assert "w4a16_linear" in capability.supported_kernels
    if family is None:  # no family matched: what the runtime alone tells, no figures
        assert capability.peak_tflops == {} and "bf16" in capability.supported_dtypes
    else:
        chip = next(c for c in CHIPS if c.name == family)
        assert capability.peak_tflops == chip.capability.peak_tflops
        assert "fp8_e4m3" not in capability.supported_dtypes and "kv-fp8" not in capability.supported_quant_formats


@pytest.mark.npu
@pytest.mark.skipif(not AscendPlatform.is_available(), reason="needs an Ascend NPU with torch_npu")
def test_kernels_match_the_reference_on_the_npu():
    """On a real NPU: every kernel against the reference on the conformance inputs (never run here)."""
    from accel.testing.conformance import check_backend_kernels_match_reference

    check_backend_kernels_match_reference(load_registry().kernel_backend("ascend"))
