"""accel-hygon's probe, platform class and registration, checked without a DCU."""

from __future__ import annotations

import importlib
import importlib.util
import shutil

import pytest
import torch
from accel_hygon import platform
from accel_hygon.platform import HygonPlatform

from accel.plugins import PluginPolicy, load_registry, run_platform_probes
from accel.schema import CapabilityDescriptor


def which_only(tool: str):
    """A shutil.which that finds `tool` and nothing else."""
    return lambda cmd, *args, **kwargs: f"/opt/dtk/bin/{cmd}" if cmd == tool else None


@pytest.fixture
def no_driver(monkeypatch):
    """No hy-smi or rocm-smi on PATH and no HIP_VISIBLE_DEVICES."""
    monkeypatch.setattr(shutil, "which", lambda cmd, *args, **kwargs: None)
    monkeypatch.delenv("HIP_VISIBLE_DEVICES", raising=False)
    return monkeypatch


def test_probe_absent(no_driver):
    assert platform.probe() is None


@pytest.mark.parametrize("sign", ["hy-smi", "rocm-smi", "env"])
def test_probe_present(no_driver, sign):
    if sign == "env":
        no_driver.setenv("HIP_VISIBLE_DEVICES", "0")
    else:
        no_driver.setattr(shutil, "which", which_only(sign))
    name = platform.probe()
    assert name == "accel_hygon.platform:HygonPlatform"
    module, _, attr = name.partition(":")
    assert getattr(importlib.import_module(module), attr) is HygonPlatform


def test_probe_needs_torch(no_driver):
    no_driver.setenv("HIP_VISIBLE_DEVICES", "0")
    real = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "torch" else real(name, *args)

    no_driver.setattr(importlib.util, "find_spec", find_spec)
    assert platform.probe() is None


@pytest.mark.skipif(torch.version.hip is not None, reason="a ROCm build of torch; a DCU may be present")
def test_not_available_without_rocm():
    assert HygonPlatform.is_available() is False


@pytest.mark.parametrize(
    ("hip", "device_name", "expected"),
    [
        ("6.2", "K100_AI", True),
        ("6.2", "Z100L", True),
        ("6.2", "AMD Instinct MI300X", False),
        (None, "K100_AI", False),
    ],
)
def test_available_only_on_rocm_with_a_dcu_name(monkeypatch, hip, device_name, expected):
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: device_name)
    assert HygonPlatform.is_available() is expected


def test_registered_by_accel_hygon():
    registry = load_registry()
    assert registry.kernel_backend("hygon").device_type == "dcu"
    assert registry.provider("kernel_backend", "hygon").distribution == "accel-hygon"


def test_probe_entry_point_runs():
    probes = {p.name: p for p in run_platform_probes(PluginPolicy())}
    assert probes["hygon"].distribution == "accel-hygon"
    assert probes["hygon"].error is None


def test_capability_reads_the_dcu_over_its_family(monkeypatch):
    props = type("Props", (), {"name": "K100_AI", "gcnArchName": "gfx928:sramecc+:xnack-"})()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index=None: props)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda index=None: (60 * 2**30, 64 * 2**30))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    capability = HygonPlatform.capability()
    assert capability.device_name == "K100_AI" and capability.compute_capability == "gfx928"
    assert capability.total_memory_bytes == 64 * 2**30 and "bf16" in capability.supported_dtypes
    assert "chip family dcu-k100-ai" in capability.source
    assert capability.peak_tflops == {}  # Hygon publishes none we could cite


@pytest.mark.dcu
@pytest.mark.skipif(not HygonPlatform.is_available(), reason="needs a Hygon DCU with ROCm PyTorch")
def test_kernels_match_the_reference_on_the_dcu():
    """On a real DCU: every kernel against the reference on the conformance inputs (never run here)."""
    from accel.testing.conformance import check_backend_kernels_match_reference

    check_backend_kernels_match_reference(load_registry().kernel_backend("hygon"))


def test_dequant_linear_falls_back_to_reference():
    capability = CapabilityDescriptor(device_name="K100_AI", device_type="dcu")
    assert load_registry().select_kernel("dequant_linear", capability).backend == "reference"
