"""The roofline model: byte and operation counts, which roof binds, missing figures, and the plan-based entry."""

from __future__ import annotations

import pytest
import torch

from accel.planning.chips import NVIDIA_CHIPS, chip_families
from accel.planning.planner import plan_profile
from accel.planning.roofline import ModelShape, Workload, predict, predict_plan, weight_bytes_per_param
from accel.plugins import load_registry
from accel.schema import CapabilityDescriptor
from accel.tools.presets import get_preset

H200 = NVIDIA_CHIPS[1].capability
LLAMA = ModelShape.llama3_8b()


def test_llama3_8b_counts():
    assert LLAMA.linear_params == 6_979_321_856  # 8.03B minus the two 525M embeddings
    assert LLAMA.embedding_params == 128256 * 4096


@pytest.mark.parametrize(("fmt", "expected_gb"), [("16-bit", 16.06), ("w4a16", 5.70), ("w8a8-int8", 9.09)])
def test_weights_match_what_the_runtime_holds(fmt, expected_gb):
    """bench/results/decode.json: weights_gb 16.06 / 5.70 / 9.09 for bf16 / w4a16 / w8a8 on Llama-3-8B shapes."""
    assert predict(LLAMA, H200, fmt).weights_gb == pytest.approx(expected_gb, abs=0.01)


def test_batch1_decode_is_weight_bytes_over_bandwidth():
    p = predict(LLAMA, H200, "16-bit", "none", Workload(batch=1, context=0))
    assert p.decode_bound == "memory"
    read_gb = p.weights_gb - LLAMA.embedding_params * 2 / 1e9  # every weight but the embedding (B rows of it)
    assert p.decode_step_ms == pytest.approx(read_gb / 4800 * 1e3, rel=1e-3)


def test_large_batches_turn_compute_bound_and_bandwidth_overrides_apply():
    big = predict(LLAMA, H200, "w4a16", "none", Workload(batch=512, context=0))
    assert big.decode_bound == "compute"
    slow = predict(LLAMA, H200, "16-bit", "none", Workload(batch=1, context=0), bandwidth_gbps=2400)
    fast = predict(LLAMA, H200, "16-bit", "none", Workload(batch=1, context=0))
    assert slow.decode_step_ms == pytest.approx(2 * fast.decode_step_ms, rel=1e-3)


def test_quantized_kv_shrinks_the_cache_and_the_attention_bytes():
    long = Workload(batch=16, context=8192, max_seq=8192, max_batch=16)
    dense, int8, int4 = (predict(LLAMA, H200, "w4a16", kv, long) for kv in ("none", "int8", "int4"))
    assert dense.kv_cache_gb == pytest.approx(2 * (int8.kv_cache_gb - 16 * 8192 * 32 * 2 * 8 * 4 / 1e9), rel=1e-6)
    assert int4.kv_cache_gb < int8.kv_cache_gb < dense.kv_cache_gb
    assert int4.decode_tokens_per_s > dense.decode_tokens_per_s


def test_int8_w8a8_prefill_runs_at_the_int8_peak():
    bf16, int8 = (predict(LLAMA, H200, fmt, "none", Workload(prompt_len=8192, max_seq=8192)) for fmt in
                  ("16-bit", "w8a8-int8"))
    assert int8.ttft_ms < 0.6 * bf16.ttft_ms  # twice the peak for the linears, same attention


def test_missing_figures_are_named_not_guessed():
    chip = chip_families()["ascend-910b"].capability  # no published bandwidth
    p = predict(LLAMA, chip, "w8a8-int8")
    assert p.decode_tokens_per_s is None and p.ttft_ms is None
    assert p.missing == ["memory bandwidth", "peak int8"]
    assert p.weights_gb == pytest.approx(9.09, abs=0.01) and p.fits is True  # memory is still predicted
    with_bandwidth = predict(LLAMA, chip, "w4a16", bandwidth_gbps=1000)
    assert with_bandwidth.decode_tokens_per_s is not None and with_bandwidth.missing == []


def test_fits_compares_with_the_device_memory():
    small = CapabilityDescriptor(device_name="x", device_type="npu", total_memory_bytes=8 * 10**9)
    assert predict(LLAMA, small, "16-bit").fits is False
    assert predict(LLAMA, small, "w4a16", workload=Workload(prompt_len=512, max_seq=1024)).fits is True


def test_fp16_activations_use_the_fp16_peak():
    chip = chip_families()["mlu370"].capability.model_copy(update={"peak_tflops": {"fp16": 96.0}})
    assert predict(LLAMA, chip, "16-bit", dtype=torch.float16).missing == []
    assert predict(LLAMA, chip, "16-bit", dtype=torch.bfloat16).missing == []  # falls back to the other 16-bit


def test_predict_plan_follows_the_plan_fallbacks():
    mlu = chip_families()["mlu370"].capability
    plan = plan_profile(get_preset("fp8-kv8").quantization, mlu, load_registry(), backend="mlu", chip="mlu370")
    p = predict_plan(LLAMA, plan, mlu)
    assert (p.weight_format, p.kv_format) == ("w8a8-int8", "int8")
    assert p.decode_tokens_per_s is not None


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown weight format"):
        predict(LLAMA, H200, "w3a7")
    with pytest.raises(ValueError):
        weight_bytes_per_param("nope")
