"""PagedKVCache: the runtime's KV cache kept in a PagedKVStore, so DecoderModel and Generator decode through it.

It has StaticKVCache's interface (rows, write_prompt, write, write_rotary, attend, seq_lens, reset, nbytes; see
accel.runtime.kv_cache.RuntimeKVCache). Row b of a batch is the store sequence `sequence_ids[b]`, with its own block
table; the store decides each page's precision (the write precision, or what a migration or the pressure ladder
made it).

- write_prompt / write: a row's new K/V [kv_heads, t, head_dim] go block by block into its table at positions
  start .. start + t - 1 (block p // block_size, slot p % block_size), the table growing as needed. Layer 0 of each
  step first truncates the row to `start` tokens, dropping what a ragged prefill padded or a rewind rejected.
- attend: for each row, the store gathers its first seq_lens[b] tokens of the layer (dequantized, float32), rows are
  zero-padded to the longest, and kv_ops.cached_attention (the reference, format "none") computes causal attention
  softmax(q k^T * sm_scale) v with the positions past a row's length masked out.

Reads and writes go through the host (block tables are Python lists), so a decode step is not CUDA-graph capturable
(`capturable = False`); this is the portable reference of a paged cache, not a kernel.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING

import torch

from accel.integration.kv_runtime.config import KVPoolConfig, KVStoreConfig
from accel.integration.kv_runtime.store import KVCapacityError, PagedKVStore
from accel.integration.kv_runtime.types import KVPrecision, KVTier
from accel.runtime import kv_ops
from accel.runtime.rope_ops import rotary_embedding

if TYPE_CHECKING:
    from accel.runtime.model import DecoderModel

__all__ = ["PagedKVCache"]

_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


class PagedKVCache:
    """K/V of up to `max_batch` rows of up to `max_seq` tokens in `store`'s blocks (module docstring)."""

    capturable = False
    attention_backend = "reference-paged"

    def __init__(
        self,
        store: PagedKVStore,
        max_batch: int,
        max_seq: int,
        *,
        tier: KVTier = KVTier.GPU,
        device: str | torch.device = "cpu",
        sequence_ids: list[str] | None = None,
    ) -> None:
        for name, value in (("max_batch", max_batch), ("max_seq", max_seq)):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        ids = sequence_ids if sequence_ids is not None else [f"row-{b}" for b in range(max_batch)]
        if len(ids) != max_batch or len(set(ids)) != max_batch:
            raise ValueError(f"sequence_ids must be {max_batch} distinct names, one per row, got {ids}")
        self.store = store
        self.max_seq = max_seq
        self.tier = tier
        self.sequence_ids = list(ids)
        self._all_ids = self.sequence_ids  # every row's, shared with the views of fewer rows
        self.seq_lens = torch.zeros(max_batch, dtype=torch.int32, device=device)
        self._views: dict[int, PagedKVCache] = {}

    @classmethod
    def for_model(
        cls,
        model: DecoderModel,
        max_batch: int,
        max_seq: int,
        *,
        precision: KVPrecision | None = None,
        block_size: int = 16,
        capacity_bytes: int | None = None,
        **config: object,
    ) -> PagedKVCache:
        """A cache with its own store shaped for `model`: pages at `precision` (default: the model's dtype, which
        stores K/V exactly as the static cache's 'none' format does) and, by default, room for every row at
        max_seq tokens, as a static cache would hold. `config` goes to KVStoreConfig (pressure_ladder, ...)."""
        args = model.args
        if max_seq > args.max_position_embeddings:
            raise ValueError(
                f"max_seq {max_seq} exceeds the model's max_position_embeddings {args.max_position_embeddings}"
            )
        precision = precision or KVPrecision(dtype=_DTYPE_NAMES.get(model.dtype, "fp32"))
        shape = {"num_layers": args.num_layers, "num_kv_heads": args.num_kv_heads, "head_dim": args.head_dim}
        page_bytes = precision.page_schema(**shape, block_size=block_size).page_size_bytes
        capacity = capacity_bytes or max_batch * math.ceil(max_seq / block_size) * args.num_layers * page_bytes
        store = PagedKVStore(
            KVStoreConfig(
                **shape,
                block_size=block_size,
                precision=precision,
                pools={KVTier.GPU: KVPoolConfig(capacity_bytes=capacity, device=str(model.device))},
                **config,  # type: ignore[arg-type]
            )
        )
        return cls(store, max_batch, max_seq, device=model.device)

    @property
    def max_batch(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def device(self) -> torch.device:
        return self.seq_lens.device

    @property
    def block_size(self) -> int:
        return self.store.config.block_size

    def rows(self, batch: int) -> PagedKVCache:
        """The first `batch` rows: a shallow copy sharing this cache's store, row names and lengths tensor."""
        if not 1 <= batch <= self.max_batch:
            raise ValueError(f"batch {batch} exceeds the cache's max_batch {self.max_batch}; allocate a larger one")
        if batch == self.max_batch:
            return self
        view = self._views.get(batch)
        if view is None:
            view = self._views[batch] = copy.copy(self)
            view.sequence_ids, view.seq_lens, view._views = self.sequence_ids[:batch], self.seq_lens[:batch], {}
        return view

    def reset(self) -> None:
        """Forget every row's tokens and free their blocks."""
        self.seq_lens.zero_()
        for sequence_id in self.sequence_ids:
            self.store.release_sequence(sequence_id)

    def _write_row(self, row: int, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one row's K and V [kv_heads, t, head_dim] at positions start .. start + t - 1."""
        sequence_id, t, size = self.sequence_ids[row], k.shape[1], self.block_size
        if start + t > self.max_seq:
            raise ValueError(f"row {row} would hold {start + t} tokens, over max_seq {self.max_seq}")
        result = self.store.allocate_for_sequence(sequence_id, start + t, self.tier)
        if not result.success:
            raise KVCapacityError(f"row {row} ({sequence_id!r}): {result.error_message}")
        table = self.store.block_table(sequence_id)
        position = start
        while position < start + t:
            index, slot = divmod(position, size)
            n = min(size - slot, start + t - position)
            chunk = slice(position - start, position - start + n)
            self.store.write(table[index], layer, slot, k[:, chunk], v[:, chunk])
            position += n

    def write_prompt(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store a right-padded prompt's K and V [B, kv_heads, T, head_dim] at positions 0 .. T - 1 of every row
        (padding too: the first decode write truncates it away). A prompt batch starts a new batch: rows past B
        free their blocks."""
        if layer == 0:
            for sequence_id in self._all_ids[k.shape[0] :]:
                self.store.release_sequence(sequence_id)
        for row in range(k.shape[0]):
            if layer == 0:
                self.store.truncate_sequence(self.sequence_ids[row], 0)
            self._write_row(row, layer, 0, k[row], v[row])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
        """Store new K and V [B, kv_heads, T, head_dim] of row b at positions[b, :] ([B, T], consecutive)."""
        t = k.shape[2]
        for row, where in enumerate(positions.tolist()):
            start = where[0]
            if where != list(range(start, start + t)):
                raise ValueError(f"positions of row {row} must be consecutive, got {where}")
            if layer == 0:
                self.store.truncate_sequence(self.sequence_ids[row], start)
            self._write_row(row, layer, start, k[row], v[row])

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
        """RoPE on q [B, T, H, D] and k [B, T, kv_heads, D] (rope_ops.rotary_embedding), then `write` of rotated k and
        v: returns q rotated. Unfused: this cache goes through the host anyway."""
        q_rot, k_rot = rotary_embedding(q, k, cos, sin)
        self.write(layer, k_rot.transpose(1, 2), v.transpose(1, 2), positions)
        return q_rot

    def attend(self, layer: int, q: torch.Tensor, seq_lens: torch.Tensor, sm_scale: float) -> torch.Tensor:
        """Causal attention of q [B, heads, T, head_dim] (the last T tokens of each row) over this layer's K/V of
        seq_lens [B] tokens per row: [B, heads, T, head_dim] in q's dtype."""
        lengths = seq_lens.tolist()
        b, _, _, d = q.shape
        heads = self.store.config.num_kv_heads
        keys = torch.zeros(b, heads, max(lengths), d, dtype=torch.float32, device=q.device)  # [B, Hkv, S, D]
        values = torch.zeros_like(keys)
        for row, length in enumerate(lengths):
            k, v = self.store.gather(self.sequence_ids[row], layer, length, device=q.device)
            keys[row, :, :length] = k
            values[row, :, :length] = v
        return kv_ops.cached_attention(q, keys, None, None, values, None, None, seq_lens, "none", sm_scale)

    def nbytes(self) -> int:
        """Bytes of the blocks the rows hold (every page's codes, scales and zero points)."""
        return sum(
            info.size_bytes
            for sequence_id in self.sequence_ids
            if sequence_id in self.store.sequences()
            for info in self.store.get_sequence_blocks(sequence_id)
        )
