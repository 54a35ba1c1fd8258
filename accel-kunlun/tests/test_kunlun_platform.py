"""accel-kunlun's probe, platform class and registration, checked without an XPU."""

from __future__ import annotations

import importlib
import importlib.util
import shutil
import sys
from importlib.machinery import ModuleSpec

import pytest
from accel_kunlun import platform
from accel_kunlun.platform import KunlunPlatform

from accel.plugins import PluginPolicy, load_registry, run_platform_probes
from accel.schema import CapabilityDescriptor

VENDOR = "torch_xmlir"
HAS_VENDOR = importlib.util.find_spec(VENDOR) is not None


def vendor_found(monkeypatch, found: bool) -> None:
    """Make find_spec report torch_xmlir as installed or not, leaving every other module alone."""
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == VENDOR:
            return ModuleSpec(VENDOR, None) if found else None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def absent(monkeypatch):
    """No torch_xmlir to find, no xpu-smi on PATH, no XPU_VISIBLE_DEVICES."""
    vendor_found(monkeypatch, False)
    monkeypatch.setattr(shutil, "which", lambda cmd, *args, **kwargs: None)
    monkeypatch.delenv("XPU_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_probe_absent(absent):
    assert platform.probe() is None


@pytest.mark.parametrize("sign", ["torch_xmlir", "xpu-smi", "env"])
def test_probe_present(absent, sign):
    if sign == "torch_xmlir":
        vendor_found(absent, True)
    elif sign == "xpu-smi":
        absent.setattr(shutil, "which", lambda cmd, *args, **kwargs: f"/usr/local/xpu/bin/{cmd}")
    else:
        absent.setenv("XPU_VISIBLE_DEVICES", "0")
    name = platform.probe()
    assert name == "accel_kunlun.platform:KunlunPlatform"
    module, _, attr = name.partition(":")
    assert getattr(importlib.import_module(module), attr) is KunlunPlatform


@pytest.mark.skipif(HAS_VENDOR, reason="torch_xmlir is installed; something may have imported it")
def test_probe_and_plugin_do_not_import_torch_xmlir(absent):
    absent.setenv("XPU_VISIBLE_DEVICES", "0")
    importlib.import_module("accel_kunlun.plugin")
    platform.probe()
    assert VENDOR not in sys.modules


@pytest.mark.skipif(HAS_VENDOR, reason="torch_xmlir is installed; an XPU may be present")
def test_not_available_without_torch_xmlir():
    assert KunlunPlatform.is_available() is False


def test_registered_by_accel_kunlun():
    registry = load_registry()
    assert registry.kernel_backend("kunlun").device_type == "xpu"
    assert registry.provider("kernel_backend", "kunlun").distribution == "accel-kunlun"


def test_probe_entry_point_runs():
    probes = {p.name: p for p in run_platform_probes(PluginPolicy())}
    assert probes["kunlun"].distribution == "accel-kunlun"
    assert probes["kunlun"].error is None


def test_dequant_linear_falls_back_to_reference():
    capability = CapabilityDescriptor(device_name="P800", device_type="xpu")
    assert load_registry().select_kernel("dequant_linear", capability).backend == "reference"
