"""Kunlunxin XPU chip families (entry point `accel.chip_families`).

accel-kunlun runs the portable reference kernels (accel_kunlun.plugin says why), so its formats are what those run
in 16-bit and int8/int4 on any torch device. Kunlunxin publishes no per-product datasheet figures we could cite for
R200 or P800, so peak throughput, bandwidth and capacity are unset; the runtime reads memory from the device.
No fp8 is planned: fp8 operators exist in baidu/vLLM-Kunlun (vllm_kunlun/ops/fp8.py) but which XPU generations run
them is not documented.
"""

from __future__ import annotations

from accel.planning.chips import ChipFamily
from accel.schema import CapabilityDescriptor

XPU_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]
SOURCES = {
    "dtypes": "fp16 / bf16 / int8 assumed for planning (vLLM-Kunlun serves bf16 and W8A8-INT8 models: "
              "https://github.com/baidu/vLLM-Kunlun/blob/main/docs/source/tutorials/multi_xpu_GLM-5-W8A8-INT8.md)",
    "quant_formats": "the portable reference kernels (accel_kunlun has no vendor kernels)",
    "peak_tflops": "unset: no published figure found",
    "memory": "unset for planning; capability() reads it from the device",
    "bandwidth": "unset: no published figure found",
    "graph": "unset: XPU graph capture (XMLIR_FORCE_USE_XPU_GRAPH in vLLM-Kunlun's docs) is not documented for torch",
    "collective": "BKCL (Kunlunxin's collective library)",
}


def _family(name: str, description: str, names: tuple[str, ...]) -> ChipFamily:
    return ChipFamily(
        name=name, backend="kunlun", description=description, device_names=names,
        capability=CapabilityDescriptor(
            device_name=name, device_type="xpu", vendor="Kunlunxin", supported_dtypes=["fp32", "fp16", "bf16", "int8"],
            supported_quant_formats=list(XPU_FORMATS), has_graph_exec=False, has_collective=True,
            source="accel_kunlun.chips (no published figures)",
        ),
        sources=SOURCES,
    )


CHIPS = [
    _family("kunlun-r200", "Kunlunxin R200 (XPU-R, second generation)", (r"R200", r"XPU-R\b", r"KL2")),
    _family("kunlun-p800", "Kunlunxin P800 (third generation)", (r"P800", r"KL3")),
]
