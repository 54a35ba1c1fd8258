"""accel-kunlun's probe, platform class and registration, checked without an XPU."""

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
    monkeypatch.setattr(glob, "glob", lambda pattern, *args, **kwargs: [])
    monkeypatch.delenv("XPU_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_probe_absent(absent):
    assert platform.probe() is None


@pytest.mark.parametrize("sign", ["torch_xmlir", "xpu-smi", "nodes", "env"])
def test_probe_present(absent, sign):
    if sign == "torch_xmlir":
        vendor_found(absent, True)
    elif sign == "xpu-smi":
        absent.setattr(shutil, "which", lambda cmd, *args, **kwargs: f"/usr/local/xpu/bin/{cmd}")
    elif sign == "nodes":
        absent.setattr(glob, "glob", lambda pattern, *args, **kwargs: ["/dev/xpu0"])
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


def test_capability_reads_the_xpu_over_its_family(monkeypatch):
    runtime = types.SimpleNamespace(
        is_available=lambda: True, current_device=lambda: 0, get_device_name=lambda index=None: "Kunlunxin P800",
        mem_get_info=lambda index=None: (90 * 2**30, 96 * 2**30), is_bf16_supported=lambda: True,
    )
    monkeypatch.setitem(sys.modules, "torch_xmlir", types.ModuleType("torch_xmlir"))
    monkeypatch.setattr(torch, "xpu", runtime, raising=False)
    capability = KunlunPlatform.capability()
    assert capability.device_name == "Kunlunxin P800" and "chip family kunlun-p800" in capability.source
    assert capability.total_memory_bytes == 96 * 2**30 and capability.supported_kernels == []


@pytest.mark.xpu
@pytest.mark.skipif(not KunlunPlatform.is_available(), reason="needs a Kunlun XPU with torch_xmlir")
def test_reference_kernels_run_on_the_xpu():
    """On a real XPU: the reference dequant_linear on the device matches the CPU (never run here)."""
    from accel.runtime.ops import OPS

    op = OPS["dequant_linear"]
    args = op.make_inputs(torch.Generator().manual_seed(0), "xpu", torch.float32)
    expected = op.reference(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    torch.testing.assert_close(op.reference(*args).cpu(), expected, rtol=1e-2, atol=1e-2)
