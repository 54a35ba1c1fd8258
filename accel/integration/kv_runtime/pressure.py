"""How a PagedKVStore makes room under memory pressure: which cold blocks step down the pressure ladder, and which
then move to the offload tier. Planning only; the store carries the plan out (and fires the callbacks).

A demotion step applies to a page when it makes the page smaller and, for channel-scaled precisions (KIVI), when the
page is full. Every candidate block takes one step, coldest first, before any takes a second; what demotion cannot
free is offloaded, coldest first, while the offload tier has room. The plan either frees `shortfall` bytes or is
None, so a store that cannot make room changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from accel.integration.kv_runtime.config import KVStoreConfig
from accel.integration.kv_runtime.pages import KVPage
from accel.integration.kv_runtime.types import KVPrecision, KVTier

__all__ = ["Block", "Relief", "bytes_after", "plan_relief", "precision_after"]


@dataclass(eq=False)
class Block:
    """A store's record of one block: its pages (one per layer), tier, owner and recency."""

    block_id: int
    tier: KVTier
    pages: list[KVPage]
    tenant_id: str | None
    sequence_id: str | None = None
    logical_index: int = 0
    tick: int = 0
    last_access: datetime = field(default_factory=datetime.now)
    access_count: int = 0

    @property
    def nbytes(self) -> int:
        return sum(page.nbytes for page in self.pages)


@dataclass
class Relief:
    """A plan to free memory in one tier: per-block demotion steps, then blocks to move to the offload tier."""

    demotions: dict[int, list[KVPrecision]] = field(default_factory=dict)
    evictions: list[int] = field(default_factory=list)


def precision_after(config: KVStoreConfig, page: KVPage, steps: list[KVPrecision]) -> KVPrecision:
    """The precision a page ends at after demotion `steps` (module docstring: when a step applies)."""
    precision = page.precision
    for step in steps:
        smaller = config.page_bytes(step) < config.page_bytes(precision)
        if smaller and (step.token_writable or page.full):
            precision = step
    return precision


def bytes_after(config: KVStoreConfig, block: Block, steps: list[KVPrecision]) -> int:
    """The block's bytes once its pages have taken `steps`."""
    return sum(config.page_bytes(precision_after(config, page, steps)) for page in block.pages)


def plan_relief(config: KVStoreConfig, coldest: list[Block], shortfall: int, offload_room: int) -> Relief | None:
    """Free `shortfall` bytes from `coldest` (the tier's candidate blocks, coldest first), moving blocks to the
    offload tier within `offload_room` bytes (0: no offload); None when it cannot be done."""
    relief = Relief()
    if shortfall <= 0:
        return relief
    for step in config.ladder():
        for block in coldest:
            if shortfall <= 0:
                return relief
            planned = relief.demotions.get(block.block_id, [])
            gain = bytes_after(config, block, planned) - bytes_after(config, block, [*planned, step])
            if gain > 0:
                relief.demotions[block.block_id] = [*planned, step]
                shortfall -= gain
    for block in coldest:
        if shortfall <= 0:
            break
        size = bytes_after(config, block, relief.demotions.get(block.block_id, []))
        if size <= offload_room:
            relief.evictions.append(block.block_id)
            offload_room -= size
            shortfall -= size
    return relief if shortfall <= 0 else None
