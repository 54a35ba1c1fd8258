"""Named presets: the AccelConfigs a user picks by name (`--preset w4a16`).

Scheme names follow the field: wXaY is X-bit weights and Y-bit activations; kvN is N-bit KV cache.
Each preset is built from validated models, so a typo here fails at import, not at run time.
"""

from __future__ import annotations

from collections.abc import Callable

from accel.errors import ProfileError
from accel.schema import AccelConfig, QuantizationProfile, SparsityConfig, SpeculativeConfig

# GPTQ with act-order over static groups: the better column order, with scales kept in natural group order
# (no g_idx), which every W4A16 kernel reads.
_GPTQ = {"act_order": True, "static_groups": True}
_W4A16 = {"weight_bits": 4, "group_size": 128, "symmetric": True, "method": "gptq", "method_config": _GPTQ}


def _quant(**fields: object) -> Callable[[], AccelConfig]:
    return lambda: AccelConfig(quantization=QuantizationProfile.model_validate(fields))


PRESETS: dict[str, Callable[[], AccelConfig]] = {
    "fp16": _quant(),
    "w8a16": _quant(weight_bits=8, weight_strategy="channel", group_size=-1, method="rtn"),
    "w8a8": _quant(
        weight_bits=8, activation_bits=8, weight_strategy="channel", group_size=-1, method="smooth_quant"
    ),
    "w4a16": _quant(**_W4A16),
    "w4a16-rtn": _quant(**{**_W4A16, "method": "rtn", "method_config": {}}),
    "w4a16-awq": _quant(**{**_W4A16, "method": "awq", "symmetric": False, "method_config": {}}),
    "w4a16-kv8": _quant(**_W4A16, kv_bits_prefill=8, kv_bits_decode=8),
    "kv8": _quant(kv_bits_prefill=8, kv_bits_decode=8),
    "kv4": _quant(kv_bits_prefill=4, kv_bits_decode=4, kv_strategy="kivi"),
    "fp8": _quant(
        weight_bits=8, weight_type="float", activation_bits=8, activation_type="float",
        weight_strategy="channel", group_size=-1, method="fp8",
    ),
    "fp8-kv8": _quant(
        weight_bits=8, weight_type="float", activation_bits=8, activation_type="float",
        weight_strategy="channel", group_size=-1, method="fp8", kv_bits_prefill=8, kv_bits_decode=8,
    ),
    "w4a16-2:4": lambda: AccelConfig(
        quantization=QuantizationProfile(**_W4A16, sparsity_pattern="2:4", sparsity_ratio=0.5),
        sparsity=SparsityConfig(pattern="2:4", method="sparsegpt"),
    ),
    "spec-ngram": lambda: AccelConfig(speculative=SpeculativeConfig(strategy="ngram")),
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> AccelConfig:
    """A fresh AccelConfig for a preset name; an unknown name lists the known ones."""
    try:
        factory = PRESETS[name]
    except KeyError:
        raise ProfileError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None
    config = factory()
    config.metadata["preset"] = name
    return config
