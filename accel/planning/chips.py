"""Chip families: what a device of a family can do and how fast, from its vendor's published figures.

A kernel-backend distribution lists its chip families under the entry-point group `accel.chip_families`
(`ascend = "accel_ascend.chips:CHIPS"`, a list of ChipFamily). Loading that list imports only the vendor
distribution's own module, never the vendor's torch extension, so `sage infer check --chip` can plan for a chip
that is not in the machine. Core adds the NVIDIA cards the CUDA benchmarks ran on, so the roofline model
(accel.planning.roofline) can be checked against measurements.

Every figure carries its source in `sources` (figure key -> URL and how far to trust it). A figure the vendor has
not published, or that no source we read gave consistently, is left unset (0 / None / absent) rather than guessed:
the roofline model then says which figure it lacks instead of predicting from a made-up number.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from accel.errors import PluginError
from accel.schema import CapabilityDescriptor

__all__ = [
    "CHIP_GROUP",
    "NVIDIA_CHIPS",
    "ChipFamily",
    "chip_families",
    "device_signs",
    "find_chip",
    "match_chip",
    "runtime_capability",
]

CHIP_GROUP = "accel.chip_families"
GB = 10**9
FIGURE_KEYS = ("dtypes", "quant_formats", "peak_tflops", "memory", "bandwidth", "graph", "collective")


@dataclass(frozen=True)
class ChipFamily:
    """One chip family of one backend: its static capability and where each figure comes from.

    `device_names` are regular expressions matched (case-insensitively, anywhere) against the device name the
    vendor runtime reports, so a platform can tell which family it is running on. `capability.peak_tflops` is
    dense throughput per dtype (TFLOPS, or TOPS for int8/int4); `memory_bandwidth_gbps` is the peak DRAM bandwidth.
    """

    name: str
    backend: str
    description: str
    device_names: tuple[str, ...]
    capability: CapabilityDescriptor
    sources: Mapping[str, str] = field(default_factory=dict)

    def matches(self, device_name: str) -> bool:
        return any(re.search(pattern, device_name, re.IGNORECASE) for pattern in self.device_names)

    def unpublished(self) -> list[str]:
        """The roofline figures this family lacks (no published figure we could cite)."""
        cap = self.capability
        missing = [] if cap.peak_tflops else ["peak_tflops"]
        missing += [] if cap.memory_bandwidth_gbps else ["memory bandwidth"]
        return missing + ([] if cap.total_memory_bytes else ["memory capacity"])

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name, "backend": self.backend, "description": self.description,
            "device_names": list(self.device_names), "capability": self.capability.to_dict(),
            "sources": dict(self.sources), "unpublished": self.unpublished(),
        }


_H100_SHEET = "https://www.nvidia.com/en-us/data-center/h100/ (H100 SXM column)"
_H200_SHEET = "https://www.nvidia.com/en-us/data-center/h200/ (H200 SXM column)"
_DENSE = "; NVIDIA lists Tensor Core figures with 2:4 sparsity, the dense figure used here is half of it"
_NVIDIA_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "w8a8-fp8", "kv-int8", "kv-int4", "kv-fp8"]
_HOPPER_TFLOPS = {"fp16": 989.4, "bf16": 989.4, "fp8": 1978.9, "int8": 1978.9}

# The cards the CUDA benchmarks (bench/results) ran on, for checking the roofline model against measurements.
NVIDIA_CHIPS = [
    ChipFamily(
        name="nvidia-h100-sxm",
        backend="cuda",
        description="NVIDIA H100 SXM 80GB (Hopper, sm_90)",
        device_names=(r"H100.*(SXM|HBM3)|H100 80GB",),
        capability=CapabilityDescriptor(
            device_name="NVIDIA H100 80GB HBM3", device_type="cuda", vendor="NVIDIA", compute_capability="9.0",
            total_memory_bytes=80 * GB, supported_dtypes=["fp32", "fp16", "bf16", "int8", "fp8_e4m3", "fp8_e5m2"],
            supported_quant_formats=list(_NVIDIA_FORMATS), has_graph_exec=True, has_collective=True,
            peak_tflops=dict(_HOPPER_TFLOPS), memory_bandwidth_gbps=3350.0, source=_H100_SHEET,
        ),
        sources={
            "peak_tflops": _H100_SHEET + _DENSE, "memory": _H100_SHEET + ": 80 GB",
            "bandwidth": _H100_SHEET + ": 3.35 TB/s", "dtypes": _H100_SHEET, "quant_formats": "accel-cuda (sm_90)",
            "graph": "CUDA graphs", "collective": "NCCL",
        },
    ),
    ChipFamily(
        name="nvidia-h200",
        backend="cuda",
        description="NVIDIA H200 SXM 141GB (Hopper, sm_90)",
        device_names=(r"H200",),
        capability=CapabilityDescriptor(
            device_name="NVIDIA H200", device_type="cuda", vendor="NVIDIA", compute_capability="9.0",
            total_memory_bytes=141 * GB, supported_dtypes=["fp32", "fp16", "bf16", "int8", "fp8_e4m3", "fp8_e5m2"],
            supported_quant_formats=list(_NVIDIA_FORMATS), has_graph_exec=True, has_collective=True,
            peak_tflops=dict(_HOPPER_TFLOPS), memory_bandwidth_gbps=4800.0, source=_H200_SHEET,
        ),
        sources={
            "peak_tflops": _H200_SHEET + _DENSE, "memory": _H200_SHEET + ": 141 GB HBM3e",
            "bandwidth": _H200_SHEET + ": 4.8 TB/s", "dtypes": _H200_SHEET, "quant_formats": "accel-cuda (sm_90)",
            "graph": "CUDA graphs", "collective": "NCCL",
        },
    ),
]


def chip_families() -> dict[str, ChipFamily]:
    """Every chip family: core's NVIDIA reference cards, then each installed backend's `accel.chip_families`
    entry point (loaded without importing any vendor stack). A duplicate family name is an error naming both."""
    from accel.plugins.loader import all_entry_points

    families: dict[str, tuple[ChipFamily, str]] = {chip.name: (chip, "accel") for chip in NVIDIA_CHIPS}
    for entry_point in all_entry_points(CHIP_GROUP):
        where = f"{entry_point.dist.name if entry_point.dist else '?'} ({entry_point.value})"
        try:
            listed = entry_point.load()
        except Exception as exc:  # a broken plugin is reported, not fatal to the others
            raise PluginError(f"{CHIP_GROUP} entry point {where} failed to load: {exc}") from exc
        for chip in listed:
            if not isinstance(chip, ChipFamily):
                raise PluginError(f"{where} lists {chip!r}, which is not an accel.planning.ChipFamily")
            if chip.name in families:
                raise PluginError(f"chip family {chip.name!r} is registered by both {families[chip.name][1]} "
                                  f"and {where}; one of them must rename it")
            families[chip.name] = (chip, where)
    return {name: chip for name, (chip, _) in families.items()}


def find_chip(name: str, families: Mapping[str, ChipFamily] | None = None) -> ChipFamily:
    """A chip family by name; an unknown name lists the known ones."""
    families = chip_families() if families is None else families
    try:
        return families[name]
    except KeyError:
        raise PluginError(f"unknown chip family {name!r}; known: {', '.join(sorted(families))}") from None


def match_chip(families: list[ChipFamily], device_name: str) -> ChipFamily | None:
    """The first family in `families` whose device-name patterns match the runtime's device name."""
    return next((chip for chip in families if chip.matches(device_name)), None)


def runtime_capability(
    families: list[ChipFamily],
    device_name: str,
    total_memory_bytes: int,
    available_memory_bytes: int,
    fallback: CapabilityDescriptor,
    **read: object,
) -> CapabilityDescriptor:
    """The capability of the device in hand: its family's published figures (matched by the runtime's device name)
    with what the runtime reads now (name, memory and `read`, e.g. supported_kernels) laid over them; `fallback`
    (what the runtime alone can tell) when no family matches the name."""
    chip = match_chip(families, device_name)
    base = fallback if chip is None else chip.capability
    source = base.source if chip is None else f"chip family {chip.name} (published figures) + runtime"
    update = {"device_name": device_name, "available_memory_bytes": available_memory_bytes, "source": source, **read}
    if total_memory_bytes:
        update["total_memory_bytes"] = total_memory_bytes
    return base.model_copy(update=update)


def device_signs(
    modules: Sequence[str] = (), tools: Sequence[str] = (), device_nodes: Sequence[str] = (), env: Sequence[str] = ()
) -> list[str]:
    """What on this machine says a vendor's device may be here, without importing anything: vendor modules that are
    installed (found, not imported), driver tools on PATH, device nodes present (glob patterns), environment
    variables set. An empty list means nothing does (a platform probe then answers None)."""
    found = [f"{name} installed" for name in modules if importlib.util.find_spec(name) is not None]
    found += [f"{tool} on PATH" for tool in tools if shutil.which(tool)]
    found += [f"{pattern} present" for pattern in device_nodes if glob.glob(pattern)]
    return found + [f"{name} set" for name in env if os.environ.get(name, "").strip()]
