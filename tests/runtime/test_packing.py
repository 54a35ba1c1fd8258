"""pack-quantized packing: exact round trips and bit-identity with compressed-tensors' own pack_to_int32."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from accel.runtime.packing import pack_int32, packed_columns, to_int32, unpack_int32


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on the dev machines' 2 shared cores torch's thread pool spins against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


SHAPES = [(1, 1), (3, 1), (1, 3), (5, 7), (4, 32), (4, 33), (7, 577), (576, 576), (192, 1536)]


def random_codes(shape: tuple[int, int], num_bits: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-(1 << (num_bits - 1)), 1 << (num_bits - 1), shape, dtype=torch.int8, generator=generator)


@pytest.mark.parametrize("num_bits", range(1, 9))
@pytest.mark.parametrize("packed_dim", [0, 1])
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_and_identity_with_compressed_tensors(num_bits: int, packed_dim: int, shape: tuple[int, int]):
    ct_helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    q = random_codes(shape, num_bits)
    packed = pack_int32(q, num_bits, packed_dim)
    words = packed_columns(shape[packed_dim], num_bits)
    assert packed.dtype == torch.int32
    assert packed.shape == ((words, shape[1]) if packed_dim == 0 else (shape[0], words))
    assert torch.equal(packed, ct_helpers.pack_to_int32(q, num_bits, packed_dim=packed_dim))
    assert torch.equal(unpack_int32(packed, num_bits, shape, packed_dim), q)
    if packed_dim == 1:  # compressed-tensors 0.20 cannot unpack 4-bit dim-0 words that fit in one row (view error)
        assert torch.equal(ct_helpers.unpack_from_int32(packed, num_bits, torch.Size(shape)), q)


def test_layout_by_hand() -> None:
    # 4 bits: element i sits at bits 4i..4i+3 of word i // 8, offset by 8 (so -8 -> 0, 7 -> 15).
    q = torch.tensor([[-8, -7, 0, 7, -1, 1, 2, 3, 5]], dtype=torch.int8)
    u = (q.long() + 8)[0].tolist()
    first = sum(value << (4 * i) for i, value in enumerate(u[:8]))
    assert pack_int32(q, 4).tolist() == [[first - (1 << 32) if first >= 1 << 31 else first, u[8]]]
    # 3 bits: element 10 straddles words 0 and 1 (bits 30..32); the rest of word 1 is zero padding.
    q3 = torch.full((1, 11), 3, dtype=torch.int8)  # unsigned 7 = 0b111 everywhere
    assert pack_int32(q3, 3).tolist() == [[-1, 1]]


def test_to_int32_wraps_high_bit() -> None:
    words = torch.tensor([0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF])
    assert to_int32(words).tolist() == [0, 1, 2**31 - 1, -(2**31), -1]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="int8"):
        pack_int32(torch.zeros(2, 2, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="1..8-bit"):
        pack_int32(torch.zeros(2, 2, dtype=torch.int8), 9)
    with pytest.raises(ValueError, match="does not hold"):
        unpack_int32(torch.zeros(2, 3, dtype=torch.int32), 4, (2, 32))
