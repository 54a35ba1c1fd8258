"""KVStoreConfig: a PagedKVStore's shape, write precision, memory pools (tiers) and pressure ladder."""

from __future__ import annotations

import itertools
from typing import Any

from pydantic import Field, model_validator

from accel.integration.kv_runtime.types import KVPrecision, KVTier
from accel.schema import KVCacheSchema
from accel.schema.base import AccelModel

__all__ = ["DEFAULT_LADDER", "KVPoolConfig", "KVStoreConfig"]


class KVPoolConfig(AccelModel):
    """One tier's memory: its byte budget for KV blocks and the torch device its tensors live on."""

    capacity_bytes: int = Field(gt=0)
    device: str = "cpu"


DEFAULT_LADDER = (KVPrecision(dtype="int8"), KVPrecision(dtype="int4", granularity="kivi"))


class KVStoreConfig(AccelModel):
    """The store's shape, write precision, pools and pressure policy.

    pressure_ladder: the precisions cold blocks step down through under memory pressure, each smaller than the
    one before. None is DEFAULT_LADDER (int8, then int4 KIVI) less the steps that would not shrink a page from
    the write precision (so an int8 store steps to int4 KIVI only); [] never demotes.
    """

    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    block_size: int = Field(default=16, gt=0)
    precision: KVPrecision = Field(default_factory=KVPrecision)
    pools: dict[KVTier, KVPoolConfig]
    pressure_ladder: list[KVPrecision] | None = None
    offload_tier: KVTier | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KVStoreConfig:
        if not self.pools:
            raise ValueError("pools is empty; give at least one tier a capacity, e.g. {'gpu': {'capacity_bytes': ...}}")
        if KVTier.NVME in self.pools:
            raise ValueError("pools: tier 'nvme' needs a disk-backed pool, which this store does not have; use gpu/cpu")
        if not self.precision.token_writable:
            raise ValueError(
                f"precision {self.precision.name}: new tokens are written one at a time, so the write precision "
                "must be per_token; reach kivi / per_channel through pressure_ladder or migrate_blocks"
            )
        steps = (self.precision, *self.ladder())
        for precision in steps:
            if precision.dtype == "int4" and self.head_dim % 2:
                raise ValueError(f"int4 packs two values a byte: head_dim must be even, got {self.head_dim}")
        sizes = {p.name: self.page_bytes(p) for p in steps}
        if any(self.page_bytes(b) >= self.page_bytes(a) for a, b in itertools.pairwise(steps)):
            raise ValueError(f"pressure_ladder must make pages smaller at every step; page bytes {sizes}")
        if self.offload_tier is not None and self.offload_tier not in self.pools:
            raise ValueError(f"offload_tier {self.offload_tier.value!r} has no pool; add it to pools")
        return self

    @classmethod
    def from_schema(cls, schema: KVCacheSchema, pools: dict[KVTier, KVPoolConfig], **kwargs: Any) -> KVStoreConfig:
        """The store for a KVCacheSchema's shape; its dtype is the write precision (per token)."""
        return cls(
            num_layers=schema.num_layers,
            num_kv_heads=schema.num_kv_heads,
            head_dim=schema.head_dim,
            block_size=schema.block_size,
            precision=KVPrecision(dtype=schema.dtype),
            pools=pools,
            **kwargs,
        )

    def ladder(self) -> list[KVPrecision]:
        """The demotion steps in force (see pressure_ladder)."""
        if self.pressure_ladder is not None:
            return list(self.pressure_ladder)
        steps: list[KVPrecision] = []
        for step in DEFAULT_LADDER:
            if self.page_bytes(step) < self.page_bytes(steps[-1] if steps else self.precision):
                steps.append(step)
        return steps

    def page_bytes(self, precision: KVPrecision) -> int:
        """Bytes of one page (one layer of one block) at `precision`."""
        return precision.page_schema(self.num_layers, self.num_kv_heads, self.head_dim, self.block_size).page_size_bytes

    def block_bytes(self, precision: KVPrecision) -> int:
        """Bytes of one block with every layer at `precision`."""
        return self.num_layers * self.page_bytes(precision)
