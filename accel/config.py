"""The config types (re-exported from accel.schema) and loading a config from a file or a preset.

A profile file is an AccelConfig as YAML or JSON. It may start from a preset with `preset: NAME`; its
other fields are merged over the preset's, section by section.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from accel.errors import ProfileError
from accel.schema import (
    AccelConfig,
    CapabilityDescriptor,
    CoTAccelConfig,
    CoTConfig,
    KVCacheSchema,
    LayerOverride,
    QuantizationProfile,
    SparsityConfig,
    SpeculativeConfig,
)
from accel.schema.io import dumps, read_document, validate
from accel.tools.presets import get_preset, preset_names

__all__ = [
    "AccelConfig",
    "CapabilityDescriptor",
    "CoTAccelConfig",
    "CoTConfig",
    "KVCacheSchema",
    "LayerOverride",
    "QuantizationProfile",
    "SparsityConfig",
    "SpeculativeConfig",
    "dumps",
    "load_config",
    "resolve_config",
]


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge: mappings merge key by key, anything else in `over` replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(path: str | Path) -> AccelConfig:
    """Read and validate an AccelConfig file (.yaml/.yml/.json); errors name the file and field."""
    path = Path(path)
    data = read_document(path)
    preset = data.pop("preset", None)
    if preset is not None:
        if not isinstance(preset, str) or preset not in preset_names():
            raise ProfileError(f"{path}: preset: got {preset!r}: allowed: {', '.join(preset_names())}")
        data = _merge(get_preset(preset).model_dump(mode="json", exclude_unset=True), data)
        data.setdefault("metadata", {})["preset"] = preset
    return validate(AccelConfig, data, str(path))


def resolve_config(profile: str | Path | None = None, preset: str | None = None) -> AccelConfig:
    """The config a CLI command means: a profile file, a preset name, or the fp16 default."""
    if profile is not None and preset is not None:
        raise ProfileError("pass either --profile FILE or --preset NAME, not both")
    if profile is not None:
        return load_config(profile)
    return get_preset(preset or "fp16")
