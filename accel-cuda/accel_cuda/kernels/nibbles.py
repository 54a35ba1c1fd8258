"""The nibble order the W4A16 decode GEMV reads (w4a16_gemv.py), as plain PyTorch: no Triton, so the load-time
conversion and its inverse run and are tested anywhere.

Pack-quantized words hold codes 0..7 of a row in nibbles 0..7. The GEMV makes two half-precision values from
nibbles i and i + 4 of a word with one LOP3, and wants them to be adjacent codes (2i, 2i + 1), whose activations
are adjacent in memory: so code c goes to slot c // 2 + 4 (c % 2).
"""

from __future__ import annotations

import torch

__all__ = ["permute_nibbles", "unpermute_nibbles"]


def _slot(code: int) -> int:
    return code // 2 + 4 * (code % 2)


def _to_int32(words: torch.Tensor) -> torch.Tensor:
    return (words - ((words >> 31) << 32)).to(torch.int32)


def permute_nibbles(words: torch.Tensor) -> torch.Tensor:
    """int32 words in pack-quantized order -> the GEMV's order (slot pair (i, i + 4) holds codes (2i, 2i + 1))."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros_like(w)
    for code in range(8):
        out |= ((w >> (4 * code)) & 0xF) << (4 * _slot(code))
    return _to_int32(out)


def unpermute_nibbles(words: torch.Tensor) -> torch.Tensor:
    """The inverse of permute_nibbles: back to pack-quantized order."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    out = torch.zeros_like(w)
    for code in range(8):
        out |= ((w >> (4 * _slot(code))) & 0xF) << (4 * code)
    return _to_int32(out)
