"""Ascend chip families and their published figures (entry point `accel.chip_families`: `accel_ascend.chips:CHIPS`).

Operator support (which dtypes, which quantized formats run on which product line) comes from the torch_npu API
documentation in Ascend/op-plugin (docs/context/torch_npu-*.md), which lists per op the supported products:
"Atlas A2" (Ascend 910B), "Atlas A3" (Ascend 910C) and "Atlas 推理系列产品" (Ascend 310P). Huawei does not publish a
per-chip datasheet with peak throughput and bandwidth for these parts; the figures below are the ones public
reports give, each with its source, and the ones we found no consistent source for are left unset.
"""

from __future__ import annotations

from accel.planning.chips import GB, ChipFamily
from accel.schema import CapabilityDescriptor

OP_DOCS = "https://github.com/Ascend/op-plugin/tree/master/docs/context"
WQBMM = f"{OP_DOCS}/torch_npu-npu_weight_quant_batchmatmul.md"
QMM = f"{OP_DOCS}/torch_npu-npu_quant_matmul.md"
FIA = f"{OP_DOCS}/torch_npu-npu_fused_infer_attention_score.md"
GRAPH = f"{OP_DOCS}/torch_npu-npu-graph_task_group_begin.md (aclgraph capture)"
HCCL = f"{OP_DOCS}/c10d_npu-ProcessGroupHCCL.md"
# No fp8 on 910B/910C: none of the op docs above lists an fp8 dtype for A2/A3 products.
A2_DTYPES = ["fp32", "fp16", "bf16", "int8", "int4"]
# Formats the backend runs on A2/A3: int4/int8 weight-only (npu_weight_quant_batchmatmul, per-group on A2/A3),
# int8 W8A8 (npu_quant_matmul), int8 KV (npu_fused_infer_attention_score, per-token per-head antiquant), and
# int4 KV through the portable reference (the vendor's int4 KV is not accel's grouped per-token layout).
A2_FORMATS = ["w8a16", "w4a16", "w4a16-asym", "w8a8-int8", "kv-int8", "kv-int4"]
A2_SOURCES = {
    "dtypes": f"{WQBMM} (int4 carried in int32 on A2/A3), {QMM}; no fp8 dtype is listed for A2/A3",
    "quant_formats": f"{WQBMM}, {QMM}, {FIA}",
    "graph": GRAPH,
    "collective": HCCL,
}

CHIPS = [
    ChipFamily(
        name="ascend-910b",
        backend="ascend",
        description="Huawei Ascend 910B (Atlas A2 training/inference series: 910B1-910B4)",
        device_names=(r"Ascend\s*910B", r"910B\d"),
        capability=CapabilityDescriptor(
            device_name="Ascend910B", device_type="npu", vendor="Huawei", compute_capability="ascend910b",
            total_memory_bytes=64 * GB, supported_dtypes=list(A2_DTYPES), supported_quant_formats=list(A2_FORMATS),
            has_graph_exec=True, has_collective=True, peak_tflops={"fp16": 320.0, "bf16": 320.0},
            source="Ascend/op-plugin torch_npu docs (operators); public reports (figures): see sources",
        ),
        sources={
            **A2_SOURCES,
            "peak_tflops": (
                "https://boardor.com/blog/huawei-ascend-910b-outperforms-h20-910c-approaches-h100 (secondary report: "
                "FP16 about 320 TFLOPS; bf16 taken equal). INT8 left unset: no source gives a 910B int8 figure"
            ),
            "memory": "same report: 64 GB HBM2e",
            "bandwidth": (
                "unset: the reports we read disagree (400 GB/s boardor.com, 768 GB/s jishuzhan.net/article/"
                "1872432607539499010, 1.2 TB/s oryoy.com) and Huawei publishes none; pass a measured bandwidth"
            ),
        },
    ),
    ChipFamily(
        name="ascend-910c",
        backend="ascend",
        description="Huawei Ascend 910C (Atlas A3 series; two 910B-class dies in one package)",
        device_names=(r"Ascend\s*910C", r"910C"),
        capability=CapabilityDescriptor(
            device_name="Ascend910C", device_type="npu", vendor="Huawei", compute_capability="ascend910c",
            total_memory_bytes=128 * GB, supported_dtypes=list(A2_DTYPES), supported_quant_formats=list(A2_FORMATS),
            has_graph_exec=True, has_collective=True,
            source="Ascend/op-plugin torch_npu docs (operators); public reports (memory): see sources",
        ),
        sources={
            **A2_SOURCES,
            "memory": ("https://boardor.com/blog/huawei-ascend-910b-outperforms-h20-910c-approaches-h100 (secondary "
                       "report: 128 GB HBM3 across the two dies)"),
            "peak_tflops": "unset: no published figure (reports only say 'close to H100')",
            "bandwidth": "unset: no published figure",
        },
    ),
    ChipFamily(
        name="ascend-310p",
        backend="ascend",
        description="Huawei Ascend 310P (Atlas 300I Duo / 'Atlas 推理系列产品'): per-channel int8 only, no bf16",
        device_names=(r"310P",),
        capability=CapabilityDescriptor(
            device_name="Ascend310P3", device_type="npu", vendor="Huawei", compute_capability="ascend310p",
            total_memory_bytes=48 * GB, supported_dtypes=["fp32", "fp16", "int8"],
            supported_quant_formats=["w8a16", "w8a8-int8"], has_graph_exec=True, has_collective=True,
            peak_tflops={"int8": 140.0}, memory_bandwidth_gbps=204.0,
            source="Ascend/op-plugin torch_npu docs (operators); Atlas 300I Duo card figures halved: see sources",
        ),
        sources={
            "dtypes": f"{WQBMM}: 'Atlas 推理系列产品' takes float16 x only",
            "quant_formats": (f"{WQBMM}: per-channel int8 only on the inference series (no int4 carrier, no "
                              f"per-group); {QMM}: int8 x int8; {FIA} lists A2/A3 only, so int8 KV is not offered"),
            "peak_tflops": ("https://avalanchenoticias.com.br/servidores-clusters-supercomputadores-computadores-"
                            "industriais-e-multiprocessadores/o-acelerador-huawei-atlas-300i-duo-e-equipado-com-um-par-"
                            "de-chips-ascend-310-ai (Atlas 300I Duo: 280 TOPS INT8 for two chips; halved per device)"),
            "memory": "same report: 96 GB LPDDR4X for two chips; halved per device",
            "bandwidth": "same report: 408 GB/s for two chips; halved per device",
            "graph": GRAPH,
            "collective": HCCL,
        },
    ),
]
