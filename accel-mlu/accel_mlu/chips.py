"""Cambricon MLU chip families and their published figures (entry point `accel.chip_families`).

Operator support follows what accel_mlu.kernels calls (torch_mlu_ops' smooth_quant_matmul for int8 W8A8, as
DeepLink's dlinfer calls it for LMDeploy) plus the portable reference for every other int format. No fp8: neither
the MLU370 launch figures nor any torch_mlu_ops call we could confirm mentions an fp8 dtype.
"""

from __future__ import annotations

from accel.planning.chips import GB, ChipFamily
from accel.schema import CapabilityDescriptor

LAUNCH_REPORT = "http://guangxilong.com/c/032129635H022.html (Cambricon's MLU370-X8 launch figures, 2022-03-21)"
DLINFER = "https://github.com/DeepLink-org/dlinfer/blob/main/dlinfer/vendor/camb/camb_ops.py"
MLU_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]
SOURCES = {
    "quant_formats": f"accel_mlu.kernels: int8 W8A8 through torch_mlu_ops.smooth_quant_matmul ({DLINFER}); "
                     "the others through the portable reference",
    "collective": f"CNCL (torch_mlu's process-group backend; {DLINFER} gets a CNCL communicator from it)",
    "graph": "unset: MLU graph capture is not confirmed by a source we read",
}

CHIPS = [
    ChipFamily(
        name="mlu370",
        backend="mlu",
        description="Cambricon MLU370 (MLU370-X8: two MLU370 chips on one card; figures are the card's)",
        device_names=(r"MLU370",),
        capability=CapabilityDescriptor(
            device_name="MLU370-X8", device_type="mlu", vendor="Cambricon", compute_capability="mtp_372",
            total_memory_bytes=48 * GB, supported_dtypes=["fp32", "fp16", "bf16", "int16", "int8", "int4"],
            supported_quant_formats=list(MLU_FORMATS), has_graph_exec=False, has_collective=True,
            peak_tflops={"fp32": 32.0, "fp16": 96.0, "bf16": 96.0, "int8": 256.0, "int4": 512.0},
            memory_bandwidth_gbps=614.4,
            source=f"{LAUNCH_REPORT}; operators: accel_mlu.kernels",
        ),
        sources={
            **SOURCES,
            "dtypes": f"{LAUNCH_REPORT}: FP32, FP16, BF16, INT16, INT8, INT4",
            "peak_tflops": f"{LAUNCH_REPORT}: 32 / 96 / 96 TFLOPS (FP32 / FP16 / BF16), 256 / 512 TOPS (INT8 / INT4)",
            "memory": f"{LAUNCH_REPORT}: 48 GB LPDDR5",
            "bandwidth": f"{LAUNCH_REPORT}: 614.4 GB/s",
        },
    ),
    ChipFamily(
        name="mlu590",
        backend="mlu",
        description="Cambricon MLU590 (figures unpublished)",
        device_names=(r"MLU590", r"MLU5\d\d"),
        capability=CapabilityDescriptor(
            device_name="MLU590", device_type="mlu", vendor="Cambricon", compute_capability="mtp_592",
            supported_dtypes=["fp32", "fp16", "bf16", "int8"], supported_quant_formats=list(MLU_FORMATS),
            has_graph_exec=False, has_collective=True, source="operators: accel_mlu.kernels; no published figures",
        ),
        sources={
            **SOURCES,
            "dtypes": "assumed as MLU370's 16-bit and int8 (the runtime's bf16 check still applies on the device)",
            "peak_tflops": "unset: Cambricon has published no MLU590 figures we could find",
            "memory": "unset: unpublished (capability() reads it from the device)",
            "bandwidth": "unset: unpublished",
        },
    ),
]
