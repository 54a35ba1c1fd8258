"""accel: a pluggable acceleration layer for LLM inference (quantization, sparsity, speculative decoding).

The public surface is small; everything else is reached through its module (accel.quantization, ...).
"""

from importlib.metadata import PackageNotFoundError, version

from accel.controller import AccelController
from accel.schema import (
    AccelConfig,
    CapabilityDescriptor,
    CoTAccelConfig,
    KVCacheSchema,
    QuantizationProfile,
    SparsityConfig,
    SpeculativeConfig,
)

try:
    __version__ = version("accel")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

__all__ = [
    "AccelConfig",
    "AccelController",
    "CapabilityDescriptor",
    "CoTAccelConfig",
    "KVCacheSchema",
    "QuantizationProfile",
    "SparsityConfig",
    "SpeculativeConfig",
    "__version__",
]
