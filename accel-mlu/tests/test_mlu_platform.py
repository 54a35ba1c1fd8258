"""accel-mlu's probe, platform class and registration, checked without an MLU."""

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
from accel_mlu import platform
from accel_mlu.platform import MLUPlatform

from accel.plugins import PluginPolicy, load_registry, run_platform_probes
from accel.schema import CapabilityDescriptor

VENDOR = "torch_mlu"
HAS_VENDOR = importlib.util.find_spec(VENDOR) is not None


def vendor_found(monkeypatch, found: bool) -> None:
    """Make find_spec report torch_mlu as installed or not, leaving every other module alone."""
    real = importlib.util.find_spec

    def find_spec(name, package=None):
        if name == VENDOR:
            return ModuleSpec(VENDOR, None) if found else None
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def absent(monkeypatch):
    """No torch_mlu to find, no cnmon, no /dev/cambricon_dev*, no MLU_VISIBLE_DEVICES."""
    vendor_found(monkeypatch, False)
    monkeypatch.setattr(shutil, "which", lambda cmd, *args, **kwargs: None)
    monkeypatch.setattr(glob, "glob", lambda pattern, *args, **kwargs: [])
    monkeypatch.delenv("MLU_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_probe_absent(absent):
    assert platform.probe() is None


@pytest.mark.parametrize("sign", ["torch_mlu", "cnmon", "nodes", "MLU_VISIBLE_DEVICES"])
def test_probe_present(absent, sign):
    if sign == "torch_mlu":
        vendor_found(absent, True)
    elif sign == "cnmon":
        absent.setattr(shutil, "which", lambda cmd, *args, **kwargs: "/usr/bin/cnmon" if cmd == sign else None)
    elif sign == "nodes":
        absent.setattr(glob, "glob", lambda pattern, *args, **kwargs: ["/dev/cambricon_dev0"])
    else:
        absent.setenv(sign, "0")
    assert platform.signs()
    name = platform.probe()
    assert name == "accel_mlu.platform:MLUPlatform"
    module, _, attr = name.partition(":")
    assert getattr(importlib.import_module(module), attr) is MLUPlatform


@pytest.mark.skipif(HAS_VENDOR, reason="torch_mlu is installed; something may have imported it")
def test_probe_and_plugin_do_not_import_torch_mlu(monkeypatch):
    vendor_found(monkeypatch, True)
    importlib.import_module("accel_mlu.plugin")
    platform.probe()
    assert VENDOR not in sys.modules


@pytest.mark.skipif(HAS_VENDOR, reason="torch_mlu is installed; an MLU may be present")
def test_not_available_without_torch_mlu():
    assert MLUPlatform.is_available() is False


def test_registered_by_accel_mlu():
    registry = load_registry()
    assert registry.kernel_backend("mlu").device_type == "mlu"
    assert registry.provider("kernel_backend", "mlu").distribution == "accel-mlu"


def test_probe_entry_point_runs():
    probes = {p.name: p for p in run_platform_probes(PluginPolicy())}
    assert probes["mlu"].distribution == "accel-mlu"
    assert probes["mlu"].error is None


def test_kernel_selection_on_an_mlu():
    capability = CapabilityDescriptor(device_name="MLU370-X8", device_type="mlu")
    registry = load_registry()
    assert registry.select_kernel("dequant_linear", capability).backend == "reference"
    assert registry.select_kernel("w8a8_int8_linear", capability).backend == "mlu"


def test_capability_reads_the_mlu_over_its_family(monkeypatch):
    runtime = types.SimpleNamespace(
        is_available=lambda: True, current_device=lambda: 0, get_device_name=lambda index=None: "MLU370-X8",
        mem_get_info=lambda index=None: (40 * 2**30, 48 * 2**30), is_bf16_supported=lambda: True,
    )
    monkeypatch.setitem(sys.modules, "torch_mlu", types.ModuleType("torch_mlu"))
    monkeypatch.setattr(torch, "mlu", runtime, raising=False)
    capability = MLUPlatform.capability()
    assert capability.memory_bandwidth_gbps == 614.4 and capability.peak_tflops["int8"] == 256.0
    assert capability.available_memory_bytes == 40 * 2**30
    assert capability.supported_kernels == ["cached_attention", "w8a8_int8_linear"]


@pytest.mark.mlu
@pytest.mark.skipif(not MLUPlatform.is_available(), reason="needs a Cambricon MLU with torch_mlu")
def test_kernels_match_the_reference_on_the_mlu():
    """On a real MLU: every kernel against the reference on the conformance inputs (never run here)."""
    from accel.testing.conformance import check_backend_kernels_match_reference

    check_backend_kernels_match_reference(load_registry().kernel_backend("mlu"))
