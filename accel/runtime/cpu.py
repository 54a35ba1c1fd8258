"""What the host CPU offers, as a CapabilityDescriptor (the reference backend's device)."""

from __future__ import annotations

import os
import platform

from accel.schema import CapabilityDescriptor


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def cpu_capability() -> CapabilityDescriptor:
    """The host CPU through the reference kernels: every format a reference kernel implements."""
    total, available = _memory()
    return CapabilityDescriptor(
        device_name=_cpu_name(),
        device_type="cpu",
        vendor=platform.machine(),
        total_memory_bytes=total,
        available_memory_bytes=available,
        supported_dtypes=["fp32", "bf16", "fp16", "int8"],
        supported_kernels=["dequant_linear"],
        # QuantLinear's portable forward runs every weight/activation format; QuantizedKVCache every KV format.
        supported_quant_formats=[
            "w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "w8a8-fp8", "kv-int8", "kv-int4", "kv-fp8",
        ],
        supported_sparse_formats=["block"],  # the reference block_sparse_linear skips zero blocks (float layers)
        has_graph_exec=False,
        has_collective=True,  # gloo
        source="read from /proc/cpuinfo and sysconf at run time",
    )
