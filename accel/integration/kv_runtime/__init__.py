"""kv_runtime: accel's paged KV store (quantized blocks, precision switching, pressure relief), the runtime cache
that decodes through it, and the evaluator that says which KV precision pays on a model, context and device."""

from accel.integration.kv_runtime.config import DEFAULT_LADDER, KVPoolConfig, KVStoreConfig
from accel.integration.kv_runtime.evaluator import (
    KVDecision,
    KVMeasurements,
    KVOption,
    KVPrecisionEvaluator,
    KVWorkload,
)
from accel.integration.kv_runtime.paged_cache import PagedKVCache
from accel.integration.kv_runtime.pages import KVPage
from accel.integration.kv_runtime.protocol import KVBackendProtocol
from accel.integration.kv_runtime.store import KVCapacityError, PagedKVStore
from accel.integration.kv_runtime.types import (
    AllocationResult,
    KVBlockInfo,
    KVPrecision,
    KVTier,
    MigrationPlan,
    MigrationResult,
)

__all__ = [
    "DEFAULT_LADDER",
    "AllocationResult",
    "KVBackendProtocol",
    "KVBlockInfo",
    "KVCapacityError",
    "KVDecision",
    "KVMeasurements",
    "KVOption",
    "KVPage",
    "KVPoolConfig",
    "KVPrecision",
    "KVPrecisionEvaluator",
    "KVStoreConfig",
    "KVTier",
    "KVWorkload",
    "MigrationPlan",
    "MigrationResult",
    "PagedKVCache",
    "PagedKVStore",
]
