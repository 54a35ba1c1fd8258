"""KVPage: one layer's K and V for the `block_size` token slots of one block, stored at one KVPrecision.

K and V are kv_quant.QuantizedKV with a batch of one: codes [1, kv_heads, block_size, head_dim] (head_dim / 2
bytes for packed int4), scales and zero points [1, kv_heads, block_size, 1] per token or [1, kv_heads, 1, head_dim]
per channel. Every quantization goes through kv_quant.quantize_kv, and x^ = (q - zp) * s is QuantizedKV.dequantize.

Writing token t at slot o of a per-token page quantizes that token alone and copies its codes and scales into slot
o, which is exactly what quantize_kv of the whole page stores for it (each token has its own scale). A page in a
channel granularity (kivi / per_channel) is quantized once, whole and full; writing into it is refused.

`dequantize_pages` reads many pages at once: consecutive pages of one precision are concatenated along the tokens
(scales broadcast to every token they cover) and dequantized in one pass, the same arithmetic elementwise, so it
equals dequantizing page by page; on CPU it saves the per-page dispatch that otherwise dominates a long gather.

Re-quantizing (`requantize`) dequantizes the filled slots in float32 and quantizes them at the new precision, so
|x - x''| <= |x - x'| + |x' - x''|: the error of each step adds, bounded per step as kv_quant's docstring says.
"""

from __future__ import annotations

import torch

from accel.integration.kv_runtime.types import KVPrecision
from accel.quantization.kv_quant import QuantizedKV, quantize_kv

__all__ = ["KVPage", "dequantize_pages"]


def _store(precision: KVPrecision, x: torch.Tensor, which: int) -> QuantizedKV:
    """K (which 0) or V (which 1) x [1, h, t, d] in the precision's storage."""
    args = precision.kv_args()[which]
    if not precision.quantized:
        return QuantizedKV(codes=x.to(precision.torch_dtype), scale=None, zero_point=None, args=args)
    return quantize_kv(x, args)


def _parts(stored: QuantizedKV) -> tuple[torch.Tensor | None, ...]:
    return stored.codes, stored.scale, stored.zero_point


class KVPage:
    """K and V of `block_size` token slots of one layer; the first `filled` slots hold tokens."""

    __slots__ = ("block_size", "filled", "keys", "precision", "values")

    def __init__(self, precision: KVPrecision, keys: QuantizedKV, values: QuantizedKV, filled: int) -> None:
        self.precision = precision
        self.keys = keys
        self.values = values
        self.block_size = keys.codes.shape[-2]
        self.filled = filled

    @classmethod
    def empty(
        cls, precision: KVPrecision, num_kv_heads: int, block_size: int, head_dim: int, device: torch.device
    ) -> KVPage:
        """A page of zeros with its storage allocated: quantizing zeros gives every tensor its final shape."""
        if not precision.token_writable:
            raise ValueError(
                f"precision {precision.name} has channel scales over the whole block, so a page cannot start empty "
                "and fill token by token; allocate per_token pages and migrate full blocks to it"
            )
        shape = (1, num_kv_heads, block_size, head_dim)
        keys, values = (_store(precision, torch.zeros(shape, device=device), which) for which in (0, 1))
        return cls(precision, keys, values, filled=0)

    @classmethod
    def from_tensors(cls, precision: KVPrecision, k: torch.Tensor, v: torch.Tensor, block_size: int) -> KVPage:
        """A page holding K and V [h, t, d] (t <= block_size) in slots 0 .. t - 1, quantized at once."""
        heads, t, dim = k.shape
        if precision.token_writable:
            page = cls.empty(precision, heads, block_size, dim, k.device)
            page.write(0, k, v)
            return page
        if t != block_size:
            raise ValueError(
                f"precision {precision.name} needs a full block ({block_size} tokens) for its channel scales, "
                f"the page holds {t}; keep partial blocks at a per_token precision"
            )
        return cls(precision, _store(precision, k[None], 0), _store(precision, v[None], 1), filled=t)

    @property
    def nbytes(self) -> int:
        """Bytes of the stored tensors: codes, scales and zero points of K and V."""
        return self.keys.nbytes + self.values.nbytes

    @property
    def device(self) -> torch.device:
        return self.keys.codes.device

    @property
    def full(self) -> bool:
        return self.filled == self.block_size

    def write(self, offset: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K and V [h, t, d] of t new tokens in slots offset .. offset + t - 1 (per-token pages only)."""
        t = k.shape[1]
        if offset < 0 or offset + t > self.block_size:
            raise ValueError(f"slots {offset} .. {offset + t - 1} fall outside the page's {self.block_size} slots")
        if not self.precision.token_writable:
            raise ValueError(
                f"page precision {self.precision.name} has channel scales over the whole block; re-quantize it to "
                "a per_token precision before writing tokens into it"
            )
        for stored, x, which in ((self.keys, k, 0), (self.values, v, 1)):
            fresh = _store(self.precision, x[None].to(self.device), which)  # [1, h, t, ...]
            for part, new in zip(_parts(stored), _parts(fresh), strict=True):
                if part is not None:
                    part[..., offset : offset + t, :] = new
        self.filled = max(self.filled, offset + t)

    def truncate(self, filled: int) -> None:
        """Forget the tokens from slot `filled` on; later writes overwrite them."""
        if not 0 <= filled <= self.block_size:
            raise ValueError(f"filled must be in 0 .. {self.block_size}, got {filled}")
        self.filled = min(self.filled, filled)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the filled slots, [h, filled, d] in `dtype` (x^ = (q - zp) * s)."""
        k = self.keys.dequantize(dtype)[0, :, : self.filled]
        v = self.values.dequantize(dtype)[0, :, : self.filled]
        return k, v

    def requantize(self, precision: KVPrecision) -> KVPage:
        """This page's tokens stored at `precision` (a new page; this one is unchanged)."""
        if precision == self.precision:
            return self
        k, v = self.dequantize(torch.float32)
        return KVPage.from_tensors(precision, k, v, self.block_size)

    def to(self, device: torch.device) -> KVPage:
        """The same page with its tensors on `device`."""
        if device == self.device:
            return self
        return KVPage(
            self.precision, self.keys.map(lambda t: t.to(device)), self.values.map(lambda t: t.to(device)), self.filled
        )


def _concat(streams: list[QuantizedKV], lengths: list[int]) -> QuantizedKV:
    """The first lengths[i] tokens of each stream (one precision) as one QuantizedKV [1, h, sum(lengths), ...];
    channel scales [1, h, 1, d] are expanded over their page's tokens so one elementwise pass dequantizes all."""

    def part(tensors: list[torch.Tensor | None]) -> torch.Tensor | None:
        if tensors[0] is None:
            return None
        pieces = []
        for tensor, n in zip(tensors, lengths, strict=True):
            assert tensor is not None
            pieces.append(tensor[..., :n, :] if tensor.shape[-2] != 1 else tensor.expand(-1, -1, n, -1))
        return torch.cat(pieces, dim=-2)

    codes = part([s.codes for s in streams])
    assert codes is not None
    return QuantizedKV(codes, part([s.scale for s in streams]), part([s.zero_point for s in streams]), streams[0].args)


def dequantize_pages(
    pages: list[KVPage], lengths: list[int], device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V of the first lengths[i] tokens of each page, in order: [h, sum(lengths), d] float32 on `device`
    (default: the first page's). Equal to concatenating each page's dequantize()."""
    if not pages or len(pages) != len(lengths):
        raise ValueError(f"give one length per page, got {len(pages)} pages and {len(lengths)} lengths")
    target = device or pages[0].device
    keys, values = [], []
    start = 0
    while start < len(pages):
        end = start + 1
        while end < len(pages) and pages[end].precision == pages[start].precision and (
            pages[end].device == pages[start].device
        ):
            end += 1
        run, counts = pages[start:end], lengths[start:end]
        k = _concat([p.keys for p in run], counts).dequantize(torch.float32)[0]
        v = _concat([p.values for p in run], counts).dequantize(torch.float32)[0]
        keys.append(k.to(target))
        values.append(v.to(target))
        start = end
    return torch.cat(keys, dim=1), torch.cat(values, dim=1)
