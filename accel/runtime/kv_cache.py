"""StaticKVCache: the runtime's preallocated per-layer K/V storage in one of kv_ops' formats.

Each layer holds K and V as [max_batch, kv_heads, max_seq, ...] codes plus, for quantized formats, scales and
zero points (kv_ops' module docstring has the formats). Row b holds its tokens left-aligned at positions
0 .. seq_lens[b] - 1, so rows of one batch may hold different lengths. A token's K/V is quantized once, when
written, per (token, head); nothing is ever re-quantized. Every shape is fixed at allocation, so a decode step
that writes and reads the cache can be captured in a CUDA graph.

Writes go through op `kv_cache_write` (kv_ops.kv_cache_write's contract: K and V of one layer quantized and
stored in one call, which a backend fuses into one kernel) and reads through op `cached_attention`
(kv_ops.cached_attention's), each chosen by the kernel registry, else the kv_ops reference directly. A decode step
writes through op `rotary_kv_cache_write` instead (rope_kv_ops' contract: RoPE on q and k fused with the write, one
kernel where the step ran rotary_embedding then kv_cache_write), chosen the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from accel.runtime import kv_ops
from accel.runtime.kv_ops import KV_FORMATS, KV_INT4_GROUP, KVTensors, kv_quantize
from accel.runtime.quant_backend import KernelSelector
from accel.runtime.rope_kv_ops import rotary_kv_cache_write

__all__ = ["RuntimeKVCache", "StaticKVCache", "check_kv_format"]

ATTENTION_OP = "cached_attention"
WRITE_OP = "kv_cache_write"
ROTARY_WRITE_OP = "rotary_kv_cache_write"


def check_kv_format(kv_format: str) -> None:
    """A clear error for an unknown format, naming the field."""
    if kv_format not in KV_FORMATS:
        raise ValueError(f"kv_format must be one of {KV_FORMATS}, got {kv_format!r}")


class RuntimeKVCache(Protocol):
    """What DecoderModel.prefill/decode and Generator use of a cache: StaticKVCache, or a paged cache such as
    accel.integration.kv_runtime.PagedKVCache. `capturable` says whether a decode step through it can be captured
    in a CUDA graph (no host syncs, fixed addresses)."""

    seq_lens: torch.Tensor
    max_seq: int
    capturable: bool

    @property
    def max_batch(self) -> int: ...

    @property
    def device(self) -> torch.device: ...

    def rows(self, batch: int) -> RuntimeKVCache: ...

    def reset(self) -> None: ...

    def write_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None: ...

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None: ...

    def write_rotary(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor: ...

    def attend(self, layer: int, q: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float) -> torch.Tensor: ...

    def nbytes(self) -> int: ...


class StaticKVCache:
    """K/V of every layer for up to `max_batch` rows of up to `max_seq` tokens, in `kv_format`."""

    capturable = True

    def __init__(
        self,
        num_layers: int,
        max_batch: int,
        kv_heads: int,
        max_seq: int,
        head_dim: int,
        *,
        kv_format: str = "none",
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        kernels: KernelSelector | None = None,
    ) -> None:
        check_kv_format(kv_format)
        for field, value in (("max_batch", max_batch), ("max_seq", max_seq), ("num_layers", num_layers)):
            if value < 1:
                raise ValueError(f"{field} must be at least 1, got {value}")
        if kv_format == "int4" and head_dim % KV_INT4_GROUP:
            raise ValueError(f"kv_format 'int4' needs head_dim divisible by {KV_INT4_GROUP}, got {head_dim}")
        self.kv_format = kv_format
        self.dtype = dtype
        self.max_seq = max_seq
        device = torch.device(device)
        # One token through the format's quantizer tells each stored tensor's dtype and last dimension.
        template = kv_quantize(torch.zeros(1, 1, 1, head_dim, dtype=dtype, device=device), kv_format)

        def allocate() -> KVTensors:
            return KVTensors(
                *(
                    None
                    if part is None
                    else torch.zeros(max_batch, kv_heads, max_seq, part.shape[-1], dtype=part.dtype, device=device)
                    for part in template
                )
            )

        self.keys: list[KVTensors] = [allocate() for _ in range(num_layers)]
        self.values: list[KVTensors] = [allocate() for _ in range(num_layers)]
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        choice = None if kernels is None else kernels.choose(ATTENTION_OP)
        self.attention: Callable[..., torch.Tensor] = kv_ops.cached_attention if choice is None else choice.impl
        self.attention_backend = "reference" if choice is None else choice.backend
        write = None if kernels is None else kernels.choose(WRITE_OP)
        self.writer: Callable[..., None] = kv_ops.kv_cache_write if write is None else write.impl
        self.write_backend = "reference" if write is None else write.backend
        rotary = None if kernels is None else kernels.choose(ROTARY_WRITE_OP)
        self.rotary_writer: Callable[..., torch.Tensor] = rotary_kv_cache_write if rotary is None else rotary.impl
        self.rotary_write_backend = "reference" if rotary is None else rotary.backend
        self._views: dict[int, StaticKVCache] = {}

    @property
    def max_batch(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seq_lens.device

    def rows(self, batch: int) -> StaticKVCache:
        """The first `batch` rows, sharing this cache's storage (a batch smaller than the capacity)."""
        if batch == self.max_batch:
            return self
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} exceeds the cache's max_batch {self.max_batch}; allocate a larger one")
        if batch not in self._views:
            view = object.__new__(StaticKVCache)
            view.__dict__.update(self.__dict__)

            def first(stored: KVTensors) -> KVTensors:
                return KVTensors(*(None if part is None else part[:batch] for part in stored))

            view.keys = [first(stored) for stored in self.keys]
            view.values = [first(stored) for stored in self.values]
            view.seq_lens = self.seq_lens[:batch]
            view._views = {}
            self._views[batch] = view
        return self._views[batch]

    def reset(self) -> None:
        """Forget every row's tokens (the storage is kept)."""
        self.seq_lens.zero_()

    def write_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a right-padded prompt's K and V [B, kv_heads, T, head_dim] at positions 0 .. T - 1 of every
        row. Padding positions are stored too; they lie at or past the row's length, where reads never look
        and the next writes land."""
        b, _, t, _ = k.shape
        positions = torch.arange(t, device=k.device).expand(b, t)  # [B, T], every row from position 0
        self.write(layer, k, v, positions)

    def layer_stores(self, layer: int) -> tuple[torch.Tensor | None, ...]:
        """The layer's K and V stores as the cache ops take them: (k_codes, k_scale, k_zero, v_codes, v_scale,
        v_zero), for a producer that writes them itself (op w4a16_linear_rope_kv, the q/k/v linear's epilogue)."""
        return (*self.keys[layer], *self.values[layer])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store new K and V [B, kv_heads, T, head_dim] of row b at positions[b, :] ([B, T], each < max_seq: the
        caller checks, as a device-side check would need a host sync): one kv_cache_write call for K and V."""
        keys, values = self.keys[layer], self.values[layer]
        self.writer(k, v, positions, *keys, *values, self.kv_format)

    def write_rotary(
        self,
        layer: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
    ) -> torch.Tensor:
        """RoPE on q [B, T, H, D] and k [B, T, kv_heads, D] (cos / sin [B or 1, T, D]), and rotated k and v
        [B, T, kv_heads, D] stored as `write` stores them at positions [B, T]: one rotary_kv_cache_write call (a
        decode step's RoPE and write in one kernel where the backend fuses them). Returns q rotated, [B, T, H, D]."""
        keys, values = self.keys[layer], self.values[layer]
        return self.rotary_writer(q, k, v, cos, sin, positions, *keys, *values, self.kv_format)

    def attend(self, layer: int, q: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Causal attention of q [B, heads, T, head_dim] (the last T tokens of each row) over this layer's cache
        holding seq_lens [B] tokens per row, the T new ones included: [B, heads, T, head_dim]."""
        k, v = self.keys[layer], self.values[layer]
        return self.attention(
            q, k.codes, k.scale, k.zero_point, v.codes, v.scale, v.zero_point, seq_lens, self.kv_format, sm_scale
        )

    def nbytes(self) -> int:
        """Bytes the cache occupies: codes, scales and zero points of every layer at full capacity."""
        return sum(
            part.numel() * part.element_size()
            for stored in (*self.keys, *self.values)
            for part in stored
            if part is not None
        )
