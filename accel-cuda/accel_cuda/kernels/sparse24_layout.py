"""The 2:4 x int4 decode GEMV's weight layout (w4a16_sparse24_gemv.py), as plain PyTorch: converted once at load
from accel's compact N:M form (accel.sparsity.storage, layout nm), and back, on any device.

Compact form, per row: kept 4-bit codes in input order (value v = 2 g + r is the r-th kept code of group g of 4
inputs), 8 a word; 2-bit positions in the same order. The kernel's word (b, w), for block b of 128 inputs and
w = 0..7, holds the codes of groups 32 b + 8 j + w, j = 0..3: so the activations of slot j across a thread's
consecutive words are consecutive in memory (vector loads), and all four groups share block b's scale. Inside a word
the codes go as the dense GEMV's (slot pair (j, j + 4) holds group j's two codes) and the position word (int16) has
nibble j = i0 | i1 << 2 for group j.
"""

from __future__ import annotations

import torch

__all__ = ["ROWS", "deinterleave_rows", "from_kernel_layout", "interleave_rows", "to_kernel_layout"]

ROWS = 4  # rows interleaved per word column for the TMA GEMV (w4a16_sparse24_tma.py)


def _fields(words: torch.Tensor, bits: int, per_word: int) -> torch.Tensor:
    """Unsigned fields of `bits` bits, least significant first: [N, W] words -> [N, W * per_word]."""
    w = words.to(torch.int64) & ((1 << (bits * per_word)) - 1)
    shifts = torch.arange(per_word, device=words.device) * bits
    return ((w[..., None] >> shifts) & ((1 << bits) - 1)).reshape(words.shape[0], -1)


def _pack(fields: torch.Tensor, bits: int, per_word: int) -> torch.Tensor:
    """Inverse of _fields: [N, W * per_word] -> int64 words [N, W]."""
    shifts = torch.arange(per_word, device=fields.device) * bits
    return (fields.reshape(fields.shape[0], -1, per_word) << shifts).sum(dim=-1)


def _to_signed(words: torch.Tensor, bits: int) -> torch.Tensor:
    dtype = torch.int32 if bits == 32 else torch.int16
    return (words - ((words >> (bits - 1)) << bits)).to(dtype)


def _blocked(fields: torch.Tensor, forward: bool) -> torch.Tensor:
    """Reorder [N, K/2] per-value fields between input order [N, B, j, w, r] and word order [N, B, w, j, r]."""
    n = fields.shape[0]
    shape = (n, -1, 4, 8, 2) if forward else (n, -1, 8, 4, 2)
    return fields.reshape(shape).transpose(2, 3).reshape(n, -1)


def to_kernel_layout(values_packed: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact (values int32 [N, K/16], indices uint8 [N, K/8]) -> the kernel's (words int32, positions int16),
    both [N, K/16]; K must be a multiple of 128."""
    n, kw = values_packed.shape
    if kw % 8 or indices.dtype != torch.uint8 or tuple(indices.shape) != (n, 2 * kw):
        raise ValueError(
            f"2:4 GEMV layout: values int32 [N, K/16] with K a multiple of 128 and indices uint8 [N, K/8]; got "
            f"{tuple(values_packed.shape)} and {indices.dtype} {tuple(indices.shape)}"
        )
    codes = _blocked(_fields(values_packed, 4, 8), forward=True)  # word order, 8 codes a word as (j, r)
    codes = codes.reshape(n, kw, 4, 2).transpose(2, 3).reshape(n, -1)  # slot order: slot j + 4 r
    pos = _blocked(_fields(indices, 2, 4), forward=True)
    return _to_signed(_pack(codes, 4, 8), 32), _to_signed(_pack(pos, 2, 8), 16)


def from_kernel_layout(words: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of to_kernel_layout."""
    n, kw = words.shape
    codes = _fields(words, 4, 8).reshape(n, kw, 2, 4).transpose(2, 3).reshape(n, -1)
    values = _to_signed(_pack(_blocked(codes, forward=False), 4, 8), 32)
    pos = _blocked(_fields(positions, 2, 8), forward=False)
    indices = _pack(pos, 2, 4).to(torch.uint8)
    return values, indices


def interleave_rows(t: torch.Tensor) -> torch.Tensor:
    """The TMA GEMV's row interleave: [N, C] -> [N / 4, 4 C], element [r, c] at [r // 4, 4 c + r % 4], so one
    thread's contiguous words are the same word column of 4 rows (N a multiple of 4)."""
    n, c = t.shape
    if n % ROWS:
        raise ValueError(f"interleave_rows needs N a multiple of {ROWS}, got {n}")
    return t.reshape(n // ROWS, ROWS, c).transpose(1, 2).reshape(n // ROWS, c * ROWS).contiguous()


def deinterleave_rows(t: torch.Tensor) -> torch.Tensor:
    """Inverse of interleave_rows: [N / 4, 4 C] -> [N, C]."""
    n4, c4 = t.shape
    return t.reshape(n4, c4 // ROWS, ROWS).transpose(1, 2).reshape(n4 * ROWS, c4 // ROWS).contiguous()
