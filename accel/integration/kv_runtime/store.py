"""PagedKVStore: a paged KV cache with quantized blocks, precision switching and memory-pressure relief.

A block is `block_size` consecutive token positions of one sequence across every layer (vLLM's block, one block
table per sequence); it holds one KVPage per layer, and each page has its own KVPrecision, so a block can be
switched per layer or, through its sequence, per request. Pools are tiers (GPU memory, host memory), each with a
byte capacity and a torch device; a block's bytes are the exact bytes of its tensors (codes, scales, zero points),
which equal KVCacheSchema.page_size_bytes of each page's precision.

Under memory pressure an allocation first demotes cold blocks down the config's pressure ladder (fp16 -> int8 ->
int4 KIVI by default), then moves the coldest blocks to `offload_tier` (an eviction: the callbacks hear of it);
pressure.py plans this (cold = least recently read or written, then earliest in its sequence). The store acts only
if the plan frees enough, so a failed allocation changes nothing; no step ever drops a block or a token.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import torch

from accel.errors import AccelError
from accel.integration.kv_runtime.config import KVStoreConfig
from accel.integration.kv_runtime.pages import KVPage, dequantize_pages
from accel.integration.kv_runtime.pressure import Block, Relief, plan_relief, precision_after
from accel.integration.kv_runtime.types import (
    AllocationResult,
    KVBlockInfo,
    KVPrecision,
    KVTier,
    MigrationPlan,
    MigrationResult,
)

__all__ = ["KVCapacityError", "PagedKVStore"]


class KVCapacityError(AccelError, MemoryError):
    """A tier has no room for what was asked, even after demoting and offloading what could be."""


class PagedKVStore:
    """KVBackendProtocol over pages in memory pools, plus sequences (block tables) and K/V reads and writes."""

    def __init__(self, config: KVStoreConfig) -> None:
        self.config = config
        self._devices = {tier: torch.device(pool.device) for tier, pool in config.pools.items()}
        self._blocks: dict[int, Block] = {}
        self._used = dict.fromkeys(config.pools, 0)
        self._sequences: dict[str, list[int]] = {}
        self._sequence_precision: dict[str, KVPrecision] = {}
        self._next_id = 0
        self._tick = 0
        self._counters: Counter[str] = Counter()
        self._eviction_callbacks: list[Callable[[list[int]], None]] = []
        self._allocation_callbacks: list[Callable[[AllocationResult], None]] = []
        self._migration_callbacks: list[Callable[[MigrationResult], None]] = []

    # ------------------------------------------------------------------------------------------ checks

    def _tier(self, tier: KVTier | str) -> KVTier:
        tier = KVTier(tier)
        if tier not in self.config.pools:
            raise ValueError(f"tier {tier.value!r} has no pool; configured: {[t.value for t in self.config.pools]}")
        return tier

    def _block(self, block_id: int) -> Block:
        if block_id not in self._blocks:
            raise ValueError(f"block {block_id} is not allocated (allocated: {len(self._blocks)} blocks)")
        return self._blocks[block_id]

    def _layer(self, layer: int) -> int:
        if not 0 <= layer < self.config.num_layers:
            raise ValueError(f"layer {layer} is outside 0 .. {self.config.num_layers - 1}")
        return layer

    def _touch(self, block: Block) -> None:
        self._tick += 1
        block.tick = self._tick
        block.last_access = datetime.now()
        block.access_count += 1

    def _free_bytes(self, tier: KVTier) -> int:
        return self.config.pools[tier].capacity_bytes - self._used[tier]

    # ------------------------------------------------------------------------------------------ callbacks

    def register_eviction_callback(self, callback: Callable[[list[int]], None]) -> None:
        self._eviction_callbacks.append(callback)

    def register_allocation_callback(self, callback: Callable[[AllocationResult], None]) -> None:
        self._allocation_callbacks.append(callback)

    def register_migration_callback(self, callback: Callable[[MigrationResult], None]) -> None:
        """Call `callback(result)` after every re-quantization or move: plans, pressure demotions, write returns."""
        self._migration_callbacks.append(callback)

    def _report_migration(self, result: MigrationResult) -> None:
        self._counters[f"migrations_{result.reason}"] += 1
        for callback in self._migration_callbacks:
            callback(result)

    # ------------------------------------------------------------------------------------------ allocation

    def allocate(
        self,
        num_blocks: int,
        tier: KVTier = KVTier.GPU,
        tenant_id: str | None = None,
        *,
        precision: KVPrecision | None = None,
    ) -> AllocationResult:
        """Allocate `num_blocks` empty blocks in `tier`, every page at `precision` (default: the write precision),
        demoting and offloading cold blocks first when the tier is short (module docstring)."""
        result = self._allocate(num_blocks, self._tier(tier), tenant_id, precision or self.config.precision)
        for callback in self._allocation_callbacks:
            callback(result)
        return result

    def _allocate(
        self, num_blocks: int, tier: KVTier, tenant_id: str | None, precision: KVPrecision
    ) -> AllocationResult:
        if num_blocks < 1:
            raise ValueError(f"num_blocks must be at least 1, got {num_blocks}")
        if not precision.token_writable:
            raise ValueError(f"precision {precision.name} cannot take tokens one at a time; allocate per_token blocks")
        need = num_blocks * self.config.block_bytes(precision)
        relief = self._plan_relief(tier, need, exclude=set())
        if relief is None:
            self._counters["failed_allocations"] += 1
            return AllocationResult(
                success=False,
                tier=tier,
                error_message=(
                    f"tier {tier.value!r} cannot hold {num_blocks} more blocks ({need} bytes at {precision.name}): "
                    f"{self._free_bytes(tier)} of {self.config.pools[tier].capacity_bytes} bytes are free and "
                    "demoting/offloading cold blocks does not free enough; free sequences or raise capacity_bytes"
                ),
            )
        demoted, evicted = self._relieve(tier, relief)
        device = self._devices[tier]
        ids = []
        for _ in range(num_blocks):
            pages = [
                KVPage.empty(precision, self.config.num_kv_heads, self.config.block_size, self.config.head_dim, device)
                for _ in range(self.config.num_layers)
            ]
            block = Block(self._next_id, tier, pages, tenant_id)
            self._touch(block)
            self._blocks[block.block_id] = block
            self._used[tier] += block.nbytes
            ids.append(block.block_id)
            self._next_id += 1
        self._counters["allocated_blocks"] += num_blocks
        return AllocationResult(
            success=True,
            block_ids=ids,
            tier=tier,
            total_bytes=need,
            demoted_block_ids=demoted,
            evicted_block_ids=evicted,
        )

    def free(self, block_ids: list[int]) -> bool:
        """Free blocks that belong to no sequence (release or truncate a sequence to free its blocks)."""
        blocks = [self._block(block_id) for block_id in block_ids]
        for block in blocks:
            if block.sequence_id is not None:
                raise ValueError(
                    f"block {block.block_id} holds positions of sequence {block.sequence_id!r}; freeing it would lose "
                    "tokens from the middle of that sequence: call release_sequence or truncate_sequence instead"
                )
        self._drop(blocks)
        return True

    def _drop(self, blocks: Iterable[Block]) -> None:
        for block in blocks:
            self._used[block.tier] -= block.nbytes
            del self._blocks[block.block_id]
            self._counters["freed_blocks"] += 1

    # ------------------------------------------------------------------------------------------ pressure

    def _plan_relief(self, tier: KVTier, need: int, exclude: set[int]) -> Relief | None:
        """How to free `need` bytes in `tier` without touching `exclude` blocks (pressure.plan_relief)."""
        coldest = sorted(
            (b for b in self._blocks.values() if b.tier == tier and b.block_id not in exclude),
            key=lambda b: (b.tick, b.logical_index, b.block_id),
        )
        offload = self.config.offload_tier
        room = self._free_bytes(offload) if offload is not None and offload != tier else 0
        return plan_relief(self.config, coldest, need - self._free_bytes(tier), room)

    def _relieve(self, tier: KVTier, relief: Relief) -> tuple[list[int], list[int]]:
        """Carry out a relief plan: demotions (migration callbacks), then evictions (eviction callbacks)."""
        for block_id, steps in relief.demotions.items():
            block = self._blocks[block_id]
            before = block.nbytes
            block.pages = [page.requantize(precision_after(self.config, page, steps)) for page in block.pages]
            self._used[tier] += block.nbytes - before
            self._counters["demoted_blocks"] += 1
            self._report_migration(
                MigrationResult(
                    plan_id=f"pressure-{self._tick}",
                    success=True,
                    block_ids=[block_id],
                    bytes_before=before,
                    bytes_after=block.nbytes,
                    reason="pressure",
                    dst_precision=steps[-1].name,
                    dst_tier=tier,
                )
            )
        if relief.evictions:
            offload = self.config.offload_tier
            assert offload is not None
            for block_id in relief.evictions:
                self._move(self._blocks[block_id], offload)
            self._counters["evicted_blocks"] += len(relief.evictions)
            for callback in self._eviction_callbacks:
                callback(list(relief.evictions))
        return list(relief.demotions), list(relief.evictions)

    def _move(self, block: Block, tier: KVTier) -> None:
        self._used[block.tier] -= block.nbytes
        block.pages = [page.to(self._devices[tier]) for page in block.pages]
        block.tier = tier
        self._used[tier] += block.nbytes

    # ------------------------------------------------------------------------------------------ migration

    def migrate_blocks(self, plan: MigrationPlan) -> bool:
        return self.migrate(plan).success

    def migrate(self, plan: MigrationPlan) -> MigrationResult:
        """Re-quantize and/or move the plan's blocks, all or none: a plan that does not fit its destination tier
        returns success False and changes nothing; a plan naming unknown blocks, layers or tiers raises."""
        src, dst = self._tier(plan.src_tier), self._tier(plan.dst_tier)
        blocks = [self._block(block_id) for block_id in plan.block_ids]
        elsewhere = [b.block_id for b in blocks if b.tier != src]
        if elsewhere:
            raise ValueError(f"blocks {elsewhere} are not in src_tier {src.value!r}; migrate them from their own tier")
        layers = list(range(self.config.num_layers)) if plan.layers is None else [self._layer(i) for i in plan.layers]
        target = plan.dst_precision
        if target is not None and not target.token_writable:
            partial = [(b.block_id, b.pages[i].filled) for b in blocks for i in layers if not b.pages[i].full]
            if partial:
                raise ValueError(
                    f"dst_precision {target.name} needs full blocks ({self.config.block_size} tokens); "
                    f"(block, tokens) {partial[:4]} are not: leave partial blocks out of the plan"
                )
        if target is not None and target.dtype == "int4" and self.config.head_dim % 2:
            raise ValueError(f"int4 packs two values a byte: head_dim must be even, got {self.config.head_dim}")
        device = self._devices[dst]
        new_pages = [
            [(page.requantize(target) if target is not None and i in layers else page).to(device) for i, page in
             enumerate(b.pages)]
            for b in blocks
        ]
        before = sum(b.nbytes for b in blocks)
        after = sum(page.nbytes for pages in new_pages for page in pages)
        room = self._free_bytes(dst) + (before if src == dst else 0)
        result = MigrationResult(
            plan_id=plan.plan_id,
            success=after <= room,
            block_ids=list(plan.block_ids),
            bytes_before=before,
            bytes_after=after if after <= room else before,
            dst_precision=None if target is None else target.name,
            dst_tier=dst,
            error_message=None if after <= room else (
                f"tier {dst.value!r} has {room} bytes for the {after} the migrated blocks need; free blocks there first"
            ),
        )
        if result.success:
            for block, pages in zip(blocks, new_pages, strict=True):
                self._used[block.tier] -= block.nbytes
                block.pages, block.tier = pages, dst
                self._used[dst] += block.nbytes
            self._counters["migrated_blocks"] += len(blocks)
        else:
            self._counters["failed_migrations"] += 1
        self._report_migration(result)
        return result

    def switch_sequence_precision(
        self, sequence_id: str, precision: KVPrecision, layers: list[int] | None = None
    ) -> MigrationResult:
        """Per-request precision switching: re-quantize the sequence's blocks (the named layers' pages) to
        `precision`. A per_token precision also becomes the precision of the sequence's later blocks; a channel-
        scaled one applies to its full blocks only (the tail keeps filling at its per-token precision)."""
        table = self.block_table(sequence_id)
        if precision.token_writable:
            if layers is None:
                self._sequence_precision[sequence_id] = precision
            ids = table
        else:
            chosen = range(self.config.num_layers) if layers is None else layers
            ids = [i for i in table if all(self._blocks[i].pages[layer].full for layer in chosen)]
        results = []
        for tier in self.config.pools:
            in_tier = [i for i in ids if self._blocks[i].tier == tier]
            if in_tier:
                plan = MigrationPlan(src_tier=tier, dst_tier=tier, block_ids=in_tier, dst_precision=precision,
                                     layers=layers)
                results.append(self.migrate(plan))
        return MigrationResult(
            plan_id=f"sequence-{sequence_id}",
            success=all(r.success for r in results),
            block_ids=[i for r in results for i in r.block_ids],
            bytes_before=sum(r.bytes_before for r in results),
            bytes_after=sum(r.bytes_after for r in results),
            dst_precision=precision.name,
            error_message="; ".join(r.error_message for r in results if r.error_message) or None,
        )

    # ------------------------------------------------------------------------------------------ sequences

    def allocate_for_sequence(
        self,
        sequence_id: str,
        num_tokens: int,
        tier: KVTier = KVTier.GPU,
        tenant_id: str | None = None,
        precision: KVPrecision | None = None,
    ) -> AllocationResult:
        """Grow the sequence's block table to cover `num_tokens` positions (new blocks at `precision`, default the
        sequence's own or the write precision; a precision given here becomes the sequence's)."""
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        if precision is not None:
            if not precision.token_writable:
                raise ValueError(f"precision {precision.name} cannot take tokens one at a time; give a per_token one")
            self._sequence_precision[sequence_id] = precision
        table = self._sequences.get(sequence_id, [])
        missing = math.ceil(num_tokens / self.config.block_size) - len(table)
        if missing <= 0:
            return AllocationResult(success=True, tier=self._tier(tier))
        chosen = self._sequence_precision.get(sequence_id, self.config.precision)
        result = self.allocate(missing, tier, tenant_id, precision=chosen)
        if result.success:
            table = self._sequences.setdefault(sequence_id, table)
            for block_id in result.block_ids:
                block = self._blocks[block_id]
                block.sequence_id, block.logical_index = sequence_id, len(table)
                table.append(block_id)
        return result

    def block_table(self, sequence_id: str) -> list[int]:
        """The sequence's block ids in position order: block i holds positions i * block_size onwards."""
        if sequence_id not in self._sequences:
            raise ValueError(f"sequence {sequence_id!r} has no blocks; allocate_for_sequence first")
        return list(self._sequences[sequence_id])

    def sequences(self) -> list[str]:
        return list(self._sequences)

    def get_sequence_blocks(self, sequence_id: str) -> list[KVBlockInfo]:
        return [self._info(self._blocks[i]) for i in self.block_table(sequence_id)]

    def release_sequence(self, sequence_id: str) -> bool:
        """Free every block of the sequence; False when there is no such sequence."""
        table = self._sequences.pop(sequence_id, None)
        self._sequence_precision.pop(sequence_id, None)
        if table is None:
            return False
        self._drop(self._blocks[i] for i in table)
        return True

    def truncate_sequence(self, sequence_id: str, num_tokens: int) -> None:
        """Keep the first `num_tokens` positions: later blocks are freed, the last kept block forgets the rest."""
        table = self._sequences.get(sequence_id, [])
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        keep = math.ceil(num_tokens / self.config.block_size)
        self._drop(self._blocks[i] for i in table[keep:])
        del table[keep:]
        if keep:
            for page in self._blocks[table[-1]].pages:
                page.truncate(num_tokens - (keep - 1) * self.config.block_size)

    # ------------------------------------------------------------------------------------------ K/V data

    def write(self, block_id: int, layer: int, offset: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K and V [kv_heads, t, head_dim] of t tokens in slots offset .. offset + t - 1 of one page. A page
        at a channel-scaled precision first returns to its sequence's per-token precision (reason 'write')."""
        block = self._block(block_id)
        page = block.pages[self._layer(layer)]
        if not page.precision.token_writable:
            self._make_writable(block, layer)
        block.pages[layer].write(offset, k, v)
        self._touch(block)

    def _make_writable(self, block: Block, layer: int) -> None:
        page = block.pages[layer]
        precision = self._sequence_precision.get(block.sequence_id or "", self.config.precision)
        fresh = page.requantize(precision)
        growth = fresh.nbytes - page.nbytes
        relief = self._plan_relief(block.tier, growth, exclude={block.block_id})
        if relief is None:
            raise KVCapacityError(
                f"block {block.block_id} layer {layer} must return to {precision.name} to take new tokens, which "
                f"needs {growth} more bytes than tier {block.tier.value!r} can free"
            )
        self._relieve(block.tier, relief)
        block.pages[layer] = fresh
        self._used[block.tier] += growth
        self._report_migration(
            MigrationResult(
                plan_id=f"write-{block.block_id}-{layer}",
                success=True,
                block_ids=[block.block_id],
                bytes_before=page.nbytes,
                bytes_after=fresh.nbytes,
                reason="write",
                dst_precision=precision.name,
                dst_tier=block.tier,
            )
        )

    def block_pages(self, block_id: int) -> list[KVPage]:
        """The block's pages, one per layer, as stored (for transfer: read them, do not write through them)."""
        block = self._block(block_id)
        self._touch(block)
        return list(block.pages)

    def read(self, block_id: int, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of one page's filled slots, dequantized: [kv_heads, filled, head_dim] float32."""
        block = self._block(block_id)
        self._touch(block)
        return block.pages[self._layer(layer)].dequantize()

    def gather(
        self, sequence_id: str, layer: int, num_tokens: int, device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the sequence's first `num_tokens` positions in one layer, block by block through its table,
        dequantized: [kv_heads, num_tokens, head_dim] float32 on `device` (default: the first page's)."""
        table = self._sequences.get(sequence_id, [])
        size = self.config.block_size
        used = math.ceil(num_tokens / size)
        if used > len(table):
            raise ValueError(f"sequence {sequence_id!r} has {len(table)} blocks, {num_tokens} tokens need {used}")
        pages, lengths = [], []
        for index, block_id in enumerate(table[:used]):
            block = self._blocks[block_id]
            page = block.pages[self._layer(layer)]
            want = min(size, num_tokens - index * size)
            if page.filled < want:
                raise ValueError(
                    f"sequence {sequence_id!r} layer {layer}: block {block_id} holds {page.filled} tokens, "
                    f"{want} were asked for; write the tokens before reading them"
                )
            pages.append(page)
            lengths.append(want)
            self._touch(block)
        return dequantize_pages(pages, lengths, device)  # [h, num_tokens, d]

    # ------------------------------------------------------------------------------------------ reports

    def _info(self, block: Block) -> KVBlockInfo:
        start = block.logical_index * self.config.block_size
        filled = [page.filled for page in block.pages]
        return KVBlockInfo(
            block_id=block.block_id,
            tier=block.tier,
            size_bytes=block.nbytes,
            tenant_id=block.tenant_id,
            sequence_id=block.sequence_id,
            token_range=None if block.sequence_id is None else (start, start + max(filled)),
            last_access=block.last_access,
            access_count=block.access_count,
            layer_precisions=[page.precision.name for page in block.pages],
            filled_tokens=filled,
        )

    def get_block_info(self, block_id: int) -> KVBlockInfo | None:
        block = self._blocks.get(block_id)
        return None if block is None else self._info(block)

    def _tiers(self, tier: KVTier | None) -> list[KVTier]:
        return list(self.config.pools) if tier is None else [self._tier(tier)]

    def get_utilization(self, tier: KVTier | None = None) -> float:
        tiers = self._tiers(tier)
        return sum(self._used[t] for t in tiers) / sum(self.config.pools[t].capacity_bytes for t in tiers)

    def get_fragmentation(self, tier: KVTier | None = None) -> float:
        """Internal fragmentation: sum over pages of bytes * (1 - filled / block_size), over allocated bytes. The
        empty slots of each sequence's last block are the waste a paged cache keeps (the rest of a block)."""
        tiers = self._tiers(tier)
        pages = [page for b in self._blocks.values() if b.tier in tiers for page in b.pages]
        allocated = sum(page.nbytes for page in pages)
        empty = sum(page.nbytes * (1 - page.filled / page.block_size) for page in pages)
        return empty / allocated if allocated else 0.0

    def get_stats(self) -> dict[str, Any]:
        """Per tier: capacity, used and free bytes, blocks, utilization, fragmentation, pages and bytes per
        precision; `tensor_bytes` recounts the tensors (it equals `used_bytes`); event counters."""
        tiers: dict[str, Any] = {}
        for tier, pool in self.config.pools.items():
            blocks = [b for b in self._blocks.values() if b.tier == tier]
            pages: Counter[str] = Counter()
            page_bytes: Counter[str] = Counter()
            for block in blocks:
                for page in block.pages:
                    pages[page.precision.name] += 1
                    page_bytes[page.precision.name] += page.nbytes
            tiers[tier.value] = {
                "capacity_bytes": pool.capacity_bytes,
                "used_bytes": self._used[tier],
                "free_bytes": self._free_bytes(tier),
                "tensor_bytes": sum(b.nbytes for b in blocks),
                "blocks": len(blocks),
                "utilization": self.get_utilization(tier),
                "fragmentation": self.get_fragmentation(tier),
                "pages_by_precision": dict(pages),
                "bytes_by_precision": dict(page_bytes),
            }
        return {
            "tiers": tiers,
            "blocks": len(self._blocks),
            "sequences": len(self._sequences),
            "utilization": self.get_utilization(),
            "fragmentation": self.get_fragmentation(),
            "block_size": self.config.block_size,
            "write_precision": self.config.precision.name,
            "counters": dict(self._counters),
        }
