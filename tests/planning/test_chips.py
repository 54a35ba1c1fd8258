"""Chip families: found through the entry points without importing a vendor stack, each figure cited."""

from __future__ import annotations

import sys

import pytest

from accel.errors import PluginError
from accel.planning.chips import FIGURE_KEYS, NVIDIA_CHIPS, ChipFamily, chip_families, find_chip, runtime_capability
from accel.schema import CapabilityDescriptor
from accel.schema.capability import QUANT_FORMATS

FAMILIES = chip_families()
VENDOR_MODULES = ("torch_npu", "torch_mlu", "torch_mlu_ops", "torch_xmlir")


def test_every_backend_lists_its_families():
    by_backend = {family.backend for family in FAMILIES.values()}
    assert {"cuda", "ascend", "mlu", "hygon", "kunlun"} <= by_backend
    assert {"ascend-910b", "ascend-910c", "mlu370", "mlu590", "dcu-z100", "dcu-k100", "kunlun-r200",
            "kunlun-p800"} <= set(FAMILIES)


def test_loading_families_imports_no_vendor_stack():
    assert not [name for name in VENDOR_MODULES if name in sys.modules]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_figures_are_cited_and_valid(name):
    family = FAMILIES[name]
    cap = family.capability
    assert set(FIGURE_KEYS) <= set(family.sources), f"{name}: uncited figures {set(FIGURE_KEYS) - set(family.sources)}"
    assert all(source.strip() for source in family.sources.values())
    assert set(cap.supported_quant_formats) <= set(QUANT_FORMATS)
    assert all(value > 0 for value in cap.peak_tflops.values())
    # An fp8 format needs an fp8 dtype, an int4 weight format int4-capable hardware or the reference.
    fp8 = "fp8_e4m3" in cap.supported_dtypes
    assert fp8 == any("fp8" in fmt for fmt in cap.supported_quant_formats), name
    # What the roofline lacks is exactly what is unset, and each unset figure says so in its source.
    for figure, key in (("peak_tflops", "peak_tflops"), ("memory bandwidth", "bandwidth")):
        if figure in family.unpublished():
            assert "unset" in family.sources[key].lower(), f"{name}: {key} unset without saying why"


def test_device_names_match_their_own_family_only():
    names = {"Ascend910B3": "ascend-910b", "Ascend910_9391": None, "MLU370-X8": "mlu370", "K100_AI": "dcu-k100-ai",
             "K100": "dcu-k100", "NVIDIA H200": "nvidia-h200", "NVIDIA H100 80GB HBM3": "nvidia-h100-sxm"}
    for device, expected in names.items():
        matched = [family.name for family in FAMILIES.values() if family.matches(device)]
        assert matched == ([expected] if expected else []), (device, matched)


def test_runtime_capability_keeps_the_family_figures_and_reads_the_rest():
    h200 = NVIDIA_CHIPS[1]
    fallback = CapabilityDescriptor(device_name="", device_type="cuda")
    cap = runtime_capability([h200], "NVIDIA H200", 150_000_000_000, 100, fallback, supported_kernels=["x"])
    assert cap.memory_bandwidth_gbps == 4800.0 and cap.total_memory_bytes == 150_000_000_000
    assert cap.available_memory_bytes == 100 and cap.supported_kernels == ["x"]
    other = runtime_capability([h200], "Some GPU", 0, 0, fallback)
    assert other.peak_tflops == {} and other.device_name == "Some GPU"


def test_unknown_chip_lists_the_known_ones():
    with pytest.raises(PluginError, match="known: .*ascend-910b"):
        find_chip("ascend-999")


def test_a_duplicate_family_name_names_both(monkeypatch):
    from types import SimpleNamespace

    from accel.plugins import loader

    dupe = [ChipFamily("nvidia-h200", "x", "dup", ("x",), NVIDIA_CHIPS[1].capability)]
    entry = SimpleNamespace(dist=SimpleNamespace(name="accel-x"), value="accel_x.chips:CHIPS", load=lambda: dupe)
    monkeypatch.setattr(loader, "all_entry_points", lambda group: [entry])
    with pytest.raises(PluginError, match="registered by both accel and"):
        chip_families()
