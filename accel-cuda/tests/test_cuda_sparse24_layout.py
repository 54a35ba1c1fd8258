"""The 2:4 GEMV's weight layout (sparse24_layout), on CPU: a lossless round trip, and a float64 reading of the layout
exactly as the kernel documents it gives core's reference result (so a layout bug fails here, without a GPU)."""

from __future__ import annotations

import pytest
import torch
from accel_cuda.kernels.sparse24_layout import deinterleave_rows, from_kernel_layout, interleave_rows, to_kernel_layout

from accel.runtime.ops import w4a16_sparse24_linear
from accel.runtime.packing import pack_int32


def compact_case(seed: int, n: int = 6, k: int = 256, symmetric: bool = False):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randint(-8, 8, (n, k // 2), generator=gen, dtype=torch.int8)
    keep = torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2)[..., :2].sort(dim=2).values
    idx = keep.reshape(n, k // 8, 4)
    indices = (idx[..., 0] | idx[..., 1] << 2 | idx[..., 2] << 4 | idx[..., 3] << 6).to(torch.uint8)
    scale = torch.rand(n, k // 128, generator=gen, dtype=torch.float64) * 0.1 + 0.01
    zp = None if symmetric else torch.randint(-8, 8, (n, k // 128), generator=gen, dtype=torch.int8)
    return pack_int32(q, 4), indices, scale, zp


def kernel_reading(x: torch.Tensor, words: torch.Tensor, positions: torch.Tensor, scale, zp) -> torch.Tensor:
    """y[n] = sum over words (b, w) and slots j of the two kept codes of group 32 b + 8 j + w (nibbles j and j + 4)
    times the activations at positions i0, i1 (nibble j of the position word), in float64."""
    n, kw = words.shape
    y = torch.zeros(x.shape[0], n, dtype=torch.float64)
    for row in range(n):
        for c in range(kw):
            word, pos = int(words[row, c]) & 0xFFFFFFFF, int(positions[row, c]) & 0xFFFF
            b, w = divmod(c, 8)
            z = 0.0 if zp is None else float(zp[row, b])
            for j in range(4):
                group = 32 * b + 8 * j + w
                nib = (pos >> (4 * j)) & 0xF
                for code_slot, i in ((j, nib & 3), (j + 4, nib >> 2)):
                    q = ((word >> (4 * code_slot)) & 0xF) - 8
                    y[:, row] += (q - z) * float(scale[row, b]) * x[:, 4 * group + i].double()
    return y


def test_round_trip_is_lossless():
    gen = torch.Generator().manual_seed(0)
    values = torch.randint(-(2**31), 2**31 - 1, (5, 32), generator=gen, dtype=torch.int64).to(torch.int32)
    indices = torch.randint(0, 256, (5, 64), generator=gen, dtype=torch.int64).to(torch.uint8)
    words, positions = to_kernel_layout(values, indices)
    assert words.dtype == torch.int32 and positions.dtype == torch.int16 and words.shape == positions.shape == (5, 32)
    back = from_kernel_layout(words, positions)
    assert torch.equal(back[0], values) and torch.equal(back[1], indices)


@pytest.mark.parametrize("symmetric", [True, False], ids=["sym", "asym"])
def test_layout_as_documented_gives_the_reference(symmetric):
    values, indices, scale, zp = compact_case(1, symmetric=symmetric)
    x = torch.randn(2, 256, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = w4a16_sparse24_linear(x, values, indices, scale, zp, 128).double()
    got = kernel_reading(x, *to_kernel_layout(values, indices), scale, zp)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_rejects_k_off_the_block():
    values = torch.zeros(4, 12, dtype=torch.int32)  # K = 192: not a multiple of 128
    with pytest.raises(ValueError, match="multiple of 128"):
        to_kernel_layout(values, torch.zeros(4, 24, dtype=torch.uint8))


def test_interleave_rows_places_row_r_column_c_at_r_div_4_and_4c_plus_r_mod_4():
    t = torch.arange(8 * 5, dtype=torch.int32).reshape(8, 5)
    got = interleave_rows(t)
    assert got.shape == (2, 20)
    for r in range(8):
        for c in range(5):
            assert got[r // 4, 4 * c + r % 4] == t[r, c]
    assert torch.equal(deinterleave_rows(got), t)
    with pytest.raises(ValueError, match="multiple of 4"):
        interleave_rows(t[:6])
