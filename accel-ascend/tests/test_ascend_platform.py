"""accel-ascend's probe, platform class and registration, checked without an NPU."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib.machinery import ModuleSpec

import pytest
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


def test_probe_absent(monkeypatch):
    vendor_found(monkeypatch, False)
    assert platform.probe() is None


def test_probe_present(monkeypatch):
    vendor_found(monkeypatch, True)
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


def test_dequant_linear_falls_back_to_reference():
    capability = CapabilityDescriptor(device_name="Ascend910B2", device_type="npu")
    assert load_registry().select_kernel("dequant_linear", capability).backend == "reference"
