"""KVBackendProtocol: what accel needs from a KV cache backend (the wider system's kv_runtime names it).

A backend hands out fixed-size blocks of KV cache in storage tiers, reports on them, migrates them (between tiers,
and here also between precisions), and tells listeners when it allocated or evicted blocks. accel's own
implementation is kv_runtime.store.PagedKVStore; an engine adapter (LMDeploy's block manager, vLLM's) can stand in
for it by implementing these methods, and kv_runtime's tests run against the protocol, not the class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from accel.integration.kv_runtime.types import AllocationResult, KVBlockInfo, KVTier, MigrationPlan

__all__ = ["KVBackendProtocol"]


@runtime_checkable
class KVBackendProtocol(Protocol):
    """Block-level allocation, information, migration and callbacks of a KV cache backend."""

    def allocate(self, num_blocks: int, tier: KVTier = ..., tenant_id: str | None = None) -> AllocationResult:
        """Allocate `num_blocks` blocks in `tier`; the result says which, or why not."""
        ...

    def free(self, block_ids: list[int]) -> bool:
        """Free blocks; True when every one was freed."""
        ...

    def get_block_info(self, block_id: int) -> KVBlockInfo | None:
        """A block's record, or None when no such block is allocated."""
        ...

    def get_utilization(self, tier: KVTier | None = None) -> float:
        """Allocated bytes over capacity, 0.0 .. 1.0, of one tier or all of them."""
        ...

    def get_fragmentation(self, tier: KVTier | None = None) -> float:
        """The share of allocated bytes that hold no token, 0.0 .. 1.0."""
        ...

    def get_stats(self) -> dict[str, Any]:
        """Utilization, fragmentation, block counts and event counters, JSON-serialisable."""
        ...

    def migrate_blocks(self, plan: MigrationPlan) -> bool:
        """Carry out a migration plan; True when it completed."""
        ...

    def register_eviction_callback(self, callback: Callable[[list[int]], None]) -> None:
        """Call `callback(block_ids)` whenever blocks are evicted from their tier."""
        ...

    def register_allocation_callback(self, callback: Callable[[AllocationResult], None]) -> None:
        """Call `callback(result)` after every allocation attempt."""
        ...
