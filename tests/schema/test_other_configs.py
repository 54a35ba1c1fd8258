"""SparsityConfig, SpeculativeConfig, CoTAccelConfig, KVCacheSchema and CapabilityDescriptor."""

import pytest
from pydantic import ValidationError

from accel.schema import (
    AccelConfig,
    CapabilityDescriptor,
    CoTAccelConfig,
    KVCacheSchema,
    QuantizationProfile,
    SparsityConfig,
    SpeculativeConfig,
    profile_support,
    required_formats,
)


def test_nm_pattern_implies_its_ratio():
    assert SparsityConfig(pattern="2:4").ratio == 0.5
    assert SparsityConfig(pattern="1:8").ratio == pytest.approx(0.875)
    assert SparsityConfig(pattern="4:8").nm == (4, 8)
    with pytest.raises(ValidationError, match="implies ratio 0.5"):
        SparsityConfig(pattern="2:4", ratio=0.3)
    assert SparsityConfig(pattern="unstructured", ratio=0.3).ratio == 0.3


def test_sparsity_rejects_bad_blocks_and_ratios():
    with pytest.raises(ValidationError, match="block_shape"):
        SparsityConfig(pattern="block", block_shape=(0, 4))
    with pytest.raises(ValidationError, match=r"layer_ratios\['mlp'\]"):
        SparsityConfig(pattern="unstructured", layer_ratios={"mlp": 1.5})
    with pytest.raises(ValidationError, match="pattern 2:4 fixes every layer's ratio; list layers to leave dense"):
        SparsityConfig(pattern="2:4", layer_ratios={"down_proj": 0.3})
    with pytest.raises(ValidationError, match="pruning method name"):
        SparsityConfig(method="Sparse GPT")
    config = SparsityConfig(pattern="4:8", method="sparsegpt", method_config={"dampening_frac": 0.02})
    assert SparsityConfig.model_validate_json(config.model_dump_json()) == config


def test_speculative_ranges():
    with pytest.raises(ValidationError, match="min_speculative_tokens"):
        SpeculativeConfig(min_speculative_tokens=5, max_speculative_tokens=2)
    with pytest.raises(ValidationError, match="needs draft_model"):
        SpeculativeConfig(strategy="draft_model")
    assert SpeculativeConfig(strategy="draft_model", draft_model="/models/draft").draft_model


def test_cot_modes_say_whether_they_are_lossy():
    assert not CoTAccelConfig().lossy
    assert CoTAccelConfig(mode="early_exit").lossy
    with pytest.raises(ValidationError):
        CoTAccelConfig(mode="guess")


def test_kv_page_size_by_hand():
    # Llama-3-8B per layer: 8 KV heads x 128 dims; a 16-token page of fp16 K and V.
    fp16 = KVCacheSchema(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype="fp16")
    assert fp16.page_size_bytes == 2 * 16 * 8 * 128 * 2
    assert fp16.bytes_per_token == 2 * 8 * 128 * 2 * 32  # 128 KiB per token
    int8 = KVCacheSchema(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype="int8",
                         scale_granularity="per_token", scale_dtype="fp16")
    assert int8.page_size_bytes == 2 * 16 * 8 * 128 + 2 * 16 * 8 * 2  # values + one fp16 scale per token-head
    int4 = KVCacheSchema(num_layers=32, num_kv_heads=8, head_dim=128, block_size=16, dtype="int4",
                         scale_granularity="kivi", scale_dtype="fp16", has_zero_point=True)
    values = 2 * 16 * 8 * 128 // 2
    scales = (8 * 128 + 16 * 8) * 2 * 2  # K per channel + V per token, fp16, scale and zero point
    assert int4.page_size_bytes == values + scales


def test_kv_schema_round_trips_despite_derived_fields():
    schema = KVCacheSchema(num_layers=2, num_kv_heads=3, head_dim=64, dtype="fp8_e4m3")
    dumped = schema.model_dump(mode="json")
    assert "page_size_bytes" in dumped
    assert KVCacheSchema.model_validate(dumped) == schema


def test_required_formats_and_support():
    w4 = QuantizationProfile(weight_bits=4, method="gptq", kv_bits_prefill=8, kv_bits_decode=8)
    assert required_formats(w4) == ["w4a16", "kv-int8"]
    asym = QuantizationProfile(weight_bits=4, method="awq", symmetric=False)
    assert required_formats(asym) == ["w4a16-asym"]
    fp8 = QuantizationProfile(weight_bits=8, weight_type="float", activation_bits=8, activation_type="float",
                              method="fp8")
    assert required_formats(fp8) == ["w8a8-fp8"]
    device = CapabilityDescriptor(device_name="chip", device_type="npu", supported_quant_formats=["w4a16"],
                                  max_sequence_length=2048)
    reasons = profile_support(w4, device)
    assert reasons[0] == "chip (npu) has no kernel for kv-int8"
    assert "max_sequence_length 4096 exceeds the device's 2048" in reasons[1]


def test_accel_config_yaml_round_trip():
    import yaml

    from accel.config import dumps
    from accel.schema.io import validate

    config = AccelConfig(
        quantization=QuantizationProfile(weight_bits=4, method="gptq"),
        sparsity=SparsityConfig(pattern="2:4", method="sparsegpt"),
        speculative=SpeculativeConfig(),
        cot_accel=CoTAccelConfig(mode="early_exit+budget", thinking_budget=128),
        metadata={"owner": "team"},
    )
    for fmt in ("yaml", "json"):
        text = dumps(config, fmt)
        data = yaml.safe_load(text)  # YAML is a superset of JSON
        assert validate(AccelConfig, data, "<text>") == config
