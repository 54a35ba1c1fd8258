"""The validated types accel and the wider system (sageLLM) share."""

from accel.schema.accel_config import AccelConfig
from accel.schema.capability import CapabilityDescriptor, profile_support, required_formats
from accel.schema.kv_cache import KVCacheSchema
from accel.schema.quantization import LayerOverride, QuantizationProfile
from accel.schema.sparsity import SparsityConfig
from accel.schema.speculative import CoTAccelConfig, SpeculativeConfig

__all__ = [
    "AccelConfig",
    "CapabilityDescriptor",
    "CoTAccelConfig",
    "KVCacheSchema",
    "LayerOverride",
    "QuantizationProfile",
    "SparsityConfig",
    "SpeculativeConfig",
    "profile_support",
    "required_formats",
]
