"""Bit packing in compressed-tensors' `pack-quantized` layout (the layout vLLM's WNA16 kernels load).

Signed b-bit codes q (int8, -2^(b-1) .. 2^(b-1) - 1) are offset to unsigned u = q + 2^(b-1) and laid end to end
along the packed dimension, least significant bit first: element i of a row occupies bits [i*b, (i+1)*b) of the
row's bit stream, and int32 word w holds stream bits [32w, 32w + 32). A row of n codes takes ceil(n*b/32) words;
the bits after the last code are zero. When 32 % b != 0 an element may straddle two words (compressed-tensors
>= 0.19 packs densely like this; releases up to 0.17 padded each word instead, which differs for b = 3, 5, 6, 7).

Every 32 consecutive elements fill exactly b words, so the general path works on chunks of 32 elements. When
8 % b == 0 (b = 1, 2, 4, 8) no code crosses a byte, and on little-endian hosts byte k of a row is simply codes
[k*8/b, (k+1)*8/b): the fast path packs and unpacks bytes (uint8) and views them as int32.
"""

from __future__ import annotations

import math
import sys

import torch
from torch.nn import functional as F

__all__ = ["pack_int32", "packed_columns", "to_int32", "unpack_int32"]


def packed_columns(n: int, num_bits: int) -> int:
    """int32 words for n codes of num_bits each: ceil(n * b / 32)."""
    return math.ceil(n * num_bits / 32)


def to_int32(words: torch.Tensor) -> torch.Tensor:
    """Reinterpret the low 32 bits of int64 words as int32 (two's complement), e.g. 0xF0000000 -> -2^28."""
    words = words & 0xFFFFFFFF
    return (words - ((words >> 31) << 32)).to(torch.int32)


def _bit_positions(num_bits: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For the 32 elements of a chunk: the word each one starts in and its bit offset inside that word."""
    if not 1 <= num_bits <= 8:
        raise ValueError(f"pack-quantized holds 1..8-bit codes, got num_bits={num_bits}")
    start = torch.arange(32, device=device) * num_bits
    return start // 32, start % 32


def _byte_aligned(num_bits: int) -> bool:
    return 8 % num_bits == 0 and sys.byteorder == "little"


def pack_int32(q: torch.Tensor, num_bits: int, packed_dim: int = 1) -> torch.Tensor:
    """Pack int8 codes [rows, cols] to int32 [rows, ceil(cols*b/32)] (packed_dim=1, weights) or
    [ceil(rows*b/32), cols] (packed_dim=0, zero points)."""
    if q.dtype != torch.int8 or q.ndim != 2:
        raise ValueError(f"expected 2-D int8 codes, got {q.dtype} of shape {tuple(q.shape)}")
    word, offset = _bit_positions(num_bits, q.device)
    if packed_dim == 0:
        q = q.T
    rows, cols = q.shape
    chunks = math.ceil(cols / 32)
    if _byte_aligned(num_bits):
        per_byte = 8 // num_bits
        values = (q.to(torch.int16) + (1 << (num_bits - 1))).to(torch.uint8)
        values = F.pad(values, (0, chunks * 32 - cols)).reshape(rows, chunks * 32 // per_byte, per_byte)
        shifts = torch.arange(per_byte, device=q.device, dtype=torch.uint8) * num_bits
        packed = (values << shifts).sum(dim=-1, dtype=torch.uint8).view(torch.int32)
        packed = packed[:, : packed_columns(cols, num_bits)]
        return packed.T.contiguous() if packed_dim == 0 else packed.contiguous()
    values = q.to(torch.int64) + (1 << (num_bits - 1))
    values = F.pad(values, (0, chunks * 32 - cols)).reshape(rows, chunks, 32)
    words = torch.zeros(rows, chunks, num_bits, dtype=torch.int64, device=q.device)
    # Bit ranges of different elements are disjoint, so adding is OR-ing. Bits shifted past bit 31 are dropped
    # by to_int32; the part of a straddling element that belongs to the next word is added there.
    words.index_add_(2, word, values << offset)
    spill = offset + num_bits > 32
    words.index_add_(2, word[spill] + 1, values[..., spill] >> (32 - offset[spill]))
    packed = to_int32(words.reshape(rows, chunks * num_bits)[:, : packed_columns(cols, num_bits)])
    return packed.T.contiguous() if packed_dim == 0 else packed.contiguous()


def unpack_int32(
    packed: torch.Tensor, num_bits: int, shape: tuple[int, int] | torch.Size, packed_dim: int = 1
) -> torch.Tensor:
    """Inverse of pack_int32: int8 codes of `shape` (the unpacked [rows, cols])."""
    if packed.dtype != torch.int32 or packed.ndim != 2:
        raise ValueError(f"expected 2-D int32 words, got {packed.dtype} of shape {tuple(packed.shape)}")
    word, offset = _bit_positions(num_bits, packed.device)
    rows, cols = (int(shape[1]), int(shape[0])) if packed_dim == 0 else (int(shape[0]), int(shape[1]))
    words = packed.T if packed_dim == 0 else packed
    expected = (rows, packed_columns(cols, num_bits))
    if tuple(words.shape) != expected:
        raise ValueError(f"packed {tuple(packed.shape)} does not hold {num_bits}-bit codes of shape {tuple(shape)}")
    chunks = math.ceil(cols / 32)
    if _byte_aligned(num_bits):
        per_byte = 8 // num_bits
        data = words.contiguous().reshape(-1).view(torch.uint8).reshape(rows, -1)
        shifts = torch.arange(per_byte, device=packed.device, dtype=torch.uint8) * num_bits
        values = ((data.unsqueeze(-1) >> shifts) & ((1 << num_bits) - 1)).reshape(rows, -1)[:, :cols]
        codes = (values.to(torch.int16) - (1 << (num_bits - 1))).to(torch.int8)
        return codes.T.contiguous() if packed_dim == 0 else codes
    words = words.to(torch.int64) & 0xFFFFFFFF
    words = F.pad(words, (0, chunks * num_bits - words.shape[1])).reshape(rows, chunks, num_bits)
    values = words[..., word] >> offset
    spill = offset + num_bits > 32
    values[..., spill] |= words[..., word[spill] + 1] << (32 - offset[spill])
    values = (values & ((1 << num_bits) - 1)).reshape(rows, chunks * 32)[:, :cols] - (1 << (num_bits - 1))
    codes = values.to(torch.int8)
    return codes.T.contiguous() if packed_dim == 0 else codes
