"""QuantizationProfile validation and round trips."""

import pytest
from pydantic import ValidationError

from accel.schema import LayerOverride, QuantizationProfile


def test_defaults_are_full_precision():
    profile = QuantizationProfile()
    assert not profile.quantizes_weights and not profile.quantizes_kv
    assert profile.scheme_name() == "w16a16"
    assert profile.ignore == ["lm_head"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weight_bits": 5}, "Input should be 2, 3, 4, 8 or 16"),
        ({"group_size": 0}, "group_size must be -1"),
        ({"weight_bits": 4, "method": "none"}, "needs a quantization method"),
        ({"weight_bits": 4, "weight_type": "float", "method": "rtn"}, "weight_type 'float' needs weight_bits 8"),
        ({"kv_bits_decode": 4, "kv_type": "float"}, "no 4-bit format"),
        ({"sparsity_pattern": "3:2"}, "unknown sparsity pattern"),
        ({"sparsity_ratio": 0.5}, "needs a sparsity_pattern"),
        ({"method": "GPTQ!"}, "lower-case plugin name"),
        ({"calibration_samples": 0}, "greater than 0"),
        ({"weight_bits": 4, "method": "rtn", "weight_strategy": "group", "group_size": -1}, "group_size -1"),
    ],
)
def test_invalid_fields_say_what_is_allowed(fields, message):
    with pytest.raises(ValidationError, match=message):
        QuantizationProfile(**fields)


def test_group_size_minus_one_means_per_channel():
    profile = QuantizationProfile(weight_bits=4, method="rtn", group_size=-1)
    assert profile.weight_strategy == "channel"


def test_partial_group_sizes_are_allowed():
    # The bundled model's hidden size 576 is not a multiple of 128; that is the quantizer's business.
    assert QuantizationProfile(weight_bits=4, method="rtn", group_size=128).group_size == 128


@pytest.mark.parametrize(
    ("fields", "name"),
    [
        ({"weight_bits": 4, "method": "gptq"}, "w4a16"),
        ({"weight_bits": 8, "activation_bits": 8, "method": "smooth_quant"}, "w8a8"),
        ({"weight_bits": 8, "weight_type": "float", "activation_bits": 8, "activation_type": "float",
          "method": "fp8"}, "w8a8-fp8"),
        ({"kv_bits_prefill": 8, "kv_bits_decode": 4}, "w16a16-kv4"),
        ({"kv_bits_prefill": 8, "kv_bits_decode": 8, "kv_type": "float"}, "w16a16-kv8fp8"),
    ],
)
def test_scheme_names(fields, name):
    assert QuantizationProfile(**fields).scheme_name() == name


def test_json_round_trip_with_overrides():
    profile = QuantizationProfile(
        weight_bits=4, method="gptq", group_size=64,
        overrides={"re:.*down_proj": LayerOverride(weight_bits=8), "model.layers.0.*": LayerOverride(skip=True)},
        ignore=["lm_head", "re:.*gate"],
    )
    again = QuantizationProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    assert again.overrides["re:.*down_proj"].weight_bits == 8


def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        QuantizationProfile(weight_bitz=4)
