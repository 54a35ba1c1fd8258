"""KVPrecisionEvaluator: the benefit-cost arithmetic on a small table worked by hand, the quality / memory / cost
filters and the tie rule, errors that say what to measure, and the decisions on the measured tables the
benchmarks wrote (bench/results/kv_runtime.json, bench/results/kernels_attention.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from accel.integration.kv_runtime import KVPrecision
from accel.integration.kv_runtime.evaluator import (
    KVCostPoint,
    KVCostTable,
    KVFormatQuality,
    KVMeasurements,
    KVPrecisionEvaluator,
    KVWorkload,
    kv_bytes_per_token,
)
from accel.runtime.kv_ops import kv_token_bytes
from accel.schema import CapabilityDescriptor

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results"
GB = 10**9
DEVICE = CapabilityDescriptor(device_name="card", device_type="cuda", total_memory_bytes=100 * GB)
WORKLOAD = KVWorkload(model="m", num_layers=32, num_kv_heads=8, head_dim=128, weight_bytes=16 * GB,
                      context_len=32768, batch_size=64)


def measurements(gbps: dict[str, float], loss: dict[str, float]) -> KVMeasurements:
    """A table of the given attention rates and perplexity losses (test inputs, not measurements)."""
    table = KVCostTable(device="card", device_type="cuda", copy_bandwidth_gbps=4000, source="test",
                        points=[KVCostPoint(batch=64, context=32768, gbps=gbps)])
    quality = [KVFormatQuality(name=n, perplexity_delta_pct=d, logits_rel_error=0.01, top1_agreement=0.99)
               for n, d in loss.items()]
    return KVMeasurements(model="m", quality_context_len=512, quality=quality, cost_tables=[table])


def test_bytes_per_token_are_the_storage_formats() -> None:
    # static: kv_ops' per (token, head) bytes; paged: KVCacheSchema.bytes_per_token
    assert kv_bytes_per_token("static-none", WORKLOAD) == 2 * 32 * 8 * kv_token_bytes("none", 128) == 131072
    assert kv_bytes_per_token("static-int4", WORKLOAD) == 2 * 32 * 8 * (64 + 16)  # fp16 s and zp per 32
    assert kv_bytes_per_token("int8", WORKLOAD) == KVPrecision(dtype="int8").page_schema(32, 8, 128, 16).bytes_per_token
    assert kv_bytes_per_token("int8", WORKLOAD) == 2 * 32 * 8 * (128 + 4)


def test_the_arithmetic_by_hand_and_the_choice() -> None:
    evaluator = KVPrecisionEvaluator(measurements(
        {"static-none": 2000, "static-int8": 1200, "static-int4": 800},
        {"static-none": 0.0, "static-int8": 0.5, "static-int4": 8.0},
    ))
    decision = evaluator.evaluate(WORKLOAD, DEVICE)
    options = {o.name: o for o in decision.options}
    budget = 0.9 * 100 * GB - 16 * GB  # 74 GB for KV
    none = options["static-none"]
    assert none.sequences == int(budget // (32768 * 131072)) == 17  # fp16 KV fits 17 of the 64 sequences
    step = 16 * GB / (4000 * GB) + 17 * 32768 * 131072 / (2000 * GB)
    assert none.step_time_s == pytest.approx(step) and none.tokens_per_s == pytest.approx(17 / step)
    int8 = options["static-int8"]
    assert int8.sequences == 33 and int8.bytes_saved_pct == pytest.approx(100 * (1 - 132 / 256))
    assert int8.dequant_slowdown == pytest.approx(2000 / 1200)
    assert not options["static-int4"].admissible and "quality loss 8.00% > 1%" in options["static-int4"].reason
    # int8 holds twice the sequences at 60% of the read rate: more tokens per second, within the quality budget
    assert decision.precision == "static-int8" and int8.tokens_per_s > none.tokens_per_s
    assert "static-int8" in decision.reason and "0.50%" in decision.reason
    # a looser quality budget lets int4 in: 55 sequences at 800 GB/s beat int8's 33 at 1200 (571 vs 508 tokens/s)
    loose = KVPrecisionEvaluator(evaluator.measurements, max_quality_loss_pct=10).evaluate(WORKLOAD, DEVICE)
    assert loose.precision == "static-int4"


def test_short_contexts_keep_full_precision_and_ties_go_to_quality() -> None:
    short = WORKLOAD.model_copy(update={"context_len": 1024, "batch_size": 8})
    evaluator = KVPrecisionEvaluator(measurements(
        {"static-none": 2000, "static-int8": 1200}, {"static-none": 0.0, "static-int8": 0.5}))
    decision = evaluator.evaluate(short, DEVICE)
    # everything fits either way; weights dominate the step (4 ms vs 0.5 ms of KV): fp16 is fastest anyway
    assert decision.precision == "static-none"
    # equal rates: int8 reads half the bytes, but the step is weight-bound, so the two are within 2%: keep quality
    tied = KVPrecisionEvaluator(measurements(
        {"static-none": 2000, "static-int8": 2000}, {"static-none": 0.0, "static-int8": 0.5}))
    result = tied.evaluate(short.model_copy(update={"batch_size": 1}), DEVICE)
    assert result.precision == "static-none"


def test_errors_say_what_to_measure() -> None:
    evaluator = KVPrecisionEvaluator(measurements({"static-none": 2000}, {"static-none": 0.0}))
    npu = DEVICE.model_copy(update={"device_type": "npu", "device_name": "ascend"})
    with pytest.raises(ValueError, match="no measured attention cost for device_type 'npu' .ascend.; run"):
        evaluator.evaluate(WORKLOAD, npu)
    with pytest.raises(ValueError, match="reports no memory"):
        evaluator.evaluate(WORKLOAD, DEVICE.model_copy(update={"total_memory_bytes": 0}))
    with pytest.raises(ValueError, match="leaving no KV memory"):
        evaluator.evaluate(WORKLOAD.model_copy(update={"weight_bytes": 95 * GB}), DEVICE)
    huge = WORKLOAD.model_copy(update={"context_len": 10**6})
    decision = evaluator.evaluate(huge, DEVICE)
    assert decision.precision is None and "one sequence needs" in decision.reason
    with pytest.raises(ValueError, match="memory_fraction must be in"):
        KVPrecisionEvaluator(evaluator.measurements, memory_fraction=0)
    with pytest.raises(ValueError, match="no such results file; run bench/kv_runtime.py"):
        KVMeasurements.from_results(RESULTS / "missing.json")


def test_decisions_on_the_measured_tables() -> None:
    measured = KVMeasurements.from_results(RESULTS / "kv_runtime.json", RESULTS / "kernels_attention.json")
    assert measured.model == "smollm2-135m-instruct"
    names = {q.name for q in measured.quality}
    assert {"fp32", "fp16", "int8", "int4", "int4-kivi", "static-none", "static-int8", "static-int4"} <= names
    evaluator = KVPrecisionEvaluator(measured)
    h200 = CapabilityDescriptor(device_name="NVIDIA H200", device_type="cuda", total_memory_bytes=141 * GB)
    for context, batch in ((4096, 16), (32768, 64), (131072, 32)):
        workload = WORKLOAD.model_copy(update={"context_len": context, "batch_size": batch})
        decision = evaluator.evaluate(workload, h200)
        assert decision.precision is not None and decision.precision.startswith("static-")  # the kernel's formats
        admissible = [o for o in decision.options if o.admissible]
        assert all(o.quality_loss_pct is not None and o.quality_loss_pct <= 1.0 for o in admissible)
        best = max(o.tokens_per_s or 0 for o in admissible)
        chosen = next(o for o in decision.options if o.name == decision.precision)
        assert (chosen.tokens_per_s or 0) >= 0.98 * best
        paged = [o for o in decision.options if not o.name.startswith("static-")]
        assert all(not o.admissible and "no measured attention cost" in o.reason for o in paged)
        assert "kernels_attention.json (NVIDIA H200" in decision.cost_source
