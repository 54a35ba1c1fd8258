"""The records kv_runtime speaks in: storage tiers, a block's precision, block info, allocation and migration.

Names and fields follow the wider system's kv_runtime types (KVTier, KVBlockInfo, AllocationResult,
MigrationPlan), made pydantic and validated, and extended where accel needs more: a block holds one page per
layer and each page has its own `KVPrecision`, so a migration can re-quantize blocks (`dst_precision`, optionally
only some `layers`) as well as move them between tiers.

A precision names how a page stores K and V, through accel.quantization.kv_quant's quantizers:
- fp32 / fp16 / bf16: the values themselves, no scales.
- fp8_e4m3, int8 (symmetric) and int4 (asymmetric, KIVI's choice) with a granularity:
  per_token: one scale (and zero point) per (token, head) over head_dim. Tokens are independent, so a page can be
  filled one token at a time and equals the page quantized at once. This is how new tokens are written.
  kivi: keys per (head, channel) over the block's tokens, values per token. per_channel: both per channel.
  Channel scales span every token of the block, so these are reached only by migrating full blocks (cold blocks),
  where they cost much less quality than per-token int4 (bench/results/kv_quality.md: +2% vs +20% perplexity).
Bytes per page are KVCacheSchema.page_size_bytes of the precision (fp32 scales and zero points, as kv_quant
stores them).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from accel.quantization.kv_quant import KVArgs, kv_args
from accel.schema import KVCacheSchema
from accel.schema.base import AccelModel

__all__ = [
    "AllocationResult",
    "KVBlockInfo",
    "KVPrecision",
    "KVTier",
    "MigrationPlan",
    "MigrationResult",
]

StorageDtype = Literal["fp32", "fp16", "bf16", "fp8_e4m3", "int8", "int4"]
Granularity = Literal["per_token", "kivi", "per_channel"]

_FLOAT_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_STRATEGY = {"per_token": "token", "kivi": "kivi", "per_channel": "channel"}


class KVTier(str, Enum):
    """Where a block's tensors live: device memory (HBM), host memory, or disk (the wider system's tiers)."""

    GPU = "gpu"
    CPU = "cpu"
    NVME = "nvme"


class KVPrecision(AccelModel):
    """How one page stores K and V (module docstring). Immutable and hashable, so it can key tables."""

    model_config = ConfigDict(frozen=True)

    dtype: StorageDtype = "fp16"
    granularity: Granularity = "per_token"

    @model_validator(mode="before")
    @classmethod
    def _known_dtype(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("dtype") == "fp8_e5m2":
            raise ValueError("dtype 'fp8_e5m2': kv_quant has no e5m2 quantizer; use 'fp8_e4m3'")
        return data

    @model_validator(mode="after")
    def _granularity_needs_codes(self) -> KVPrecision:
        if not self.quantized and self.granularity != "per_token":
            raise ValueError(
                f"granularity {self.granularity!r} applies to quantized dtypes; {self.dtype} stores K and V "
                "unchanged, so leave granularity 'per_token'"
            )
        return self

    @classmethod
    def from_name(cls, name: str) -> KVPrecision:
        """'int8' -> int8 per token, 'int4-kivi' -> int4 KIVI; the inverse of `name`."""
        dtype, _, granularity = name.partition("-")
        if granularity and granularity not in ("kivi", "channel"):
            raise ValueError(f"KV precision {name!r}: the suffix must be '-kivi' or '-channel', got {granularity!r}")
        return cls(dtype=dtype, granularity="per_channel" if granularity == "channel" else granularity or "per_token")

    @property
    def name(self) -> str:
        """'fp16', 'int8', 'int4-kivi', 'int8-channel': the key results tables use."""
        suffix = {"per_token": "", "kivi": "-kivi", "per_channel": "-channel"}[self.granularity]
        return self.dtype + suffix

    @property
    def quantized(self) -> bool:
        return self.dtype not in _FLOAT_DTYPES

    @property
    def bits(self) -> int:
        return {"fp32": 32, "fp16": 16, "bf16": 16, "fp8_e4m3": 8, "int8": 8, "int4": 4}[self.dtype]

    @property
    def token_writable(self) -> bool:
        """New tokens can be written one at a time (per-token scales): true of every per_token precision."""
        return self.granularity == "per_token"

    @property
    def torch_dtype(self) -> Any:
        """The tensor dtype of a full-precision page (fp32/fp16/bf16); None for quantized ones."""
        import torch

        return getattr(torch, _FLOAT_DTYPES[self.dtype]) if not self.quantized else None

    def kv_args(self) -> KVArgs:
        """kv_quant's args for keys and values (16 bits stores them unchanged)."""
        if not self.quantized:
            return kv_args(16)
        number = "float" if self.dtype == "fp8_e4m3" else "int"
        return kv_args(self.bits, number, _STRATEGY[self.granularity])  # type: ignore[arg-type]

    def page_schema(self, num_layers: int, num_kv_heads: int, head_dim: int, block_size: int) -> KVCacheSchema:
        """The KVCacheSchema of a cache stored at this precision; its page_size_bytes is one page's bytes."""
        keys = self.kv_args().keys
        return KVCacheSchema(
            num_layers=num_layers,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            block_size=block_size,
            dtype=self.dtype,
            scale_dtype="fp32",
            scale_granularity=self.granularity,
            has_zero_point=keys.quantizes and not keys.symmetric,
            layout="paged",
        )


class KVBlockInfo(AccelModel):
    """One block as the store reports it. token_range is the [start, end) of the sequence positions it holds;
    layer_precisions and filled_tokens are per layer (a block has one page per layer)."""

    block_id: int
    tier: KVTier = KVTier.GPU
    size_bytes: int = 0
    tenant_id: str | None = None
    sequence_id: str | None = None
    token_range: tuple[int, int] | None = None
    last_access: datetime = Field(default_factory=datetime.now)
    access_count: int = 0
    is_prefix: bool = False
    ref_count: int = 1
    metadata: dict[str, Any] = Field(default_factory=dict)
    layer_precisions: list[str] = Field(default_factory=list)
    filled_tokens: list[int] = Field(default_factory=list)


class AllocationResult(AccelModel):
    """What an allocation did. When memory was short, `demoted_block_ids` were re-quantized down the store's
    pressure ladder and `evicted_block_ids` moved to the offload tier to make room; nothing was dropped."""

    success: bool
    block_ids: list[int] = Field(default_factory=list)
    tier: KVTier = KVTier.GPU
    total_bytes: int = 0
    error_message: str | None = None
    demoted_block_ids: list[int] = Field(default_factory=list)
    evicted_block_ids: list[int] = Field(default_factory=list)


class MigrationPlan(AccelModel):
    """Move blocks from src_tier to dst_tier and/or re-quantize them to dst_precision (only `layers`' pages when
    given). Either the tiers differ or dst_precision is set; otherwise the plan would do nothing."""

    plan_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    src_tier: KVTier = KVTier.GPU
    dst_tier: KVTier = KVTier.GPU
    block_ids: list[int]
    total_bytes: int = 0
    priority: int = 10
    deadline: datetime | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    dst_precision: KVPrecision | None = None
    layers: list[int] | None = None

    @field_validator("block_ids")
    @classmethod
    def _ids(cls, value: list[int]) -> list[int]:
        if not value:
            raise ValueError("block_ids is empty; name the blocks to migrate")
        if len(set(value)) != len(value):
            raise ValueError(f"block_ids names a block twice: {sorted(value)}")
        return value

    @model_validator(mode="after")
    def _does_something(self) -> MigrationPlan:
        if self.src_tier == self.dst_tier and self.dst_precision is None:
            raise ValueError("the plan neither changes tier nor sets dst_precision; set one of them")
        if self.layers is not None and self.dst_precision is None:
            raise ValueError("layers selects pages to re-quantize; set dst_precision too")
        return self


class MigrationResult(AccelModel):
    """What a migration did: bytes of the named blocks before and after; `reason` is 'plan' for migrate_blocks,
    'pressure' for demotions the store made to fit an allocation, 'write' when a channel-quantized page had to
    return to the write precision to take new tokens (a rewind into a cold block)."""

    plan_id: str
    success: bool
    block_ids: list[int] = Field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0
    reason: Literal["plan", "pressure", "write"] = "plan"
    dst_precision: str | None = None
    dst_tier: KVTier | None = None
    error_message: str | None = None

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after
