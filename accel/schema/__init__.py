"""The validated types accel and the wider system (sageLLM) share."""

from accel.schema.accel_config import AccelConfig
from accel.schema.capability import CapabilityDescriptor, profile_support, required_formats
from accel.schema.cot import COT_MODES, CoTAccelConfig, CoTConfig, CoTMode
from accel.schema.kv_cache import KVCacheSchema
from accel.schema.quantization import LayerOverride, QuantizationProfile
from accel.schema.sparsity import SparsityConfig
from accel.schema.speculative import SpeculativeConfig

__all__ = [
    "COT_MODES",
    "AccelConfig",
    "CapabilityDescriptor",
    "CoTAccelConfig",
    "CoTConfig",
    "CoTMode",
    "KVCacheSchema",
    "LayerOverride",
    "QuantizationProfile",
    "SparsityConfig",
    "SpeculativeConfig",
    "profile_support",
    "required_formats",
]
