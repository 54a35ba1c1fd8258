"""KVCacheSchema: the shape and precision of a (paged) KV cache, and the bytes it costs."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, computed_field, model_validator

from accel.schema.base import AccelModel

KVDtype = Literal["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2", "int8", "int4"]

# Bits per stored element for each KV dtype.
KV_DTYPE_BITS: dict[str, int] = {
    "fp32": 32, "fp16": 16, "bf16": 16, "fp8_e4m3": 8, "fp8_e5m2": 8, "int8": 8, "int4": 4,
}
SCALE_DTYPE_BYTES: dict[str, int] = {"fp32": 4, "fp16": 2, "bf16": 2}


class KVCacheSchema(AccelModel):
    """One model's KV cache. A page (block) holds K and V of `block_size` tokens for one layer.

    Scales: `per_token` stores one scale per (token, head) for K and for V; `per_channel` one per
    (head, channel) per page; `kivi` keys per channel and values per token; `per_tensor` one per layer
    (not counted per page). `has_zero_point` doubles the scale storage (asymmetric quantization).
    """

    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    block_size: int = Field(default=16, gt=0)
    dtype: KVDtype = "fp16"
    scale_dtype: Literal["fp32", "fp16", "bf16"] = "fp32"
    scale_granularity: Literal["per_tensor", "per_token", "per_channel", "kivi"] = "per_token"
    has_zero_point: bool = False
    layout: Literal["paged", "contiguous"] = "paged"
    max_seq_len: int = Field(default=4096, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _drop_derived(cls, data: object) -> object:
        # Derived sizes are written by model_dump; they are recomputed, never read back.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k not in ("page_size_bytes", "bytes_per_token")}
        return data

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "int4", "fp8_e4m3", "fp8_e5m2")

    def _scale_bytes_per_page(self) -> int:
        if not self.quantized or self.scale_granularity == "per_tensor":
            return 0
        per_token = self.block_size * self.num_kv_heads  # one scale per token per head
        per_channel = self.num_kv_heads * self.head_dim  # one scale per channel per head, per page
        counts = {
            "per_token": 2 * per_token,  # K and V
            "per_channel": 2 * per_channel,
            "kivi": per_channel + per_token,  # K per channel, V per token
        }[self.scale_granularity]
        return counts * SCALE_DTYPE_BYTES[self.scale_dtype] * (2 if self.has_zero_point else 1)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def page_size_bytes(self) -> int:
        """Bytes of one page: K and V values (bits/8 each) plus their scales, for one layer."""
        values_bits = 2 * self.block_size * self.num_kv_heads * self.head_dim * KV_DTYPE_BITS[self.dtype]
        return values_bits // 8 + self._scale_bytes_per_page()

    @computed_field  # type: ignore[prop-decorator]
    @property
    def bytes_per_token(self) -> float:
        """Average bytes one token costs across all layers, scales included."""
        return self.page_size_bytes * self.num_layers / self.block_size
