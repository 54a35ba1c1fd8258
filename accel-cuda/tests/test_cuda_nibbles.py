"""The decode GEMV's nibble order (accel_cuda.kernels.nibbles), checked on CPU against the codes it must hold."""

from __future__ import annotations

import torch
from accel_cuda.kernels.nibbles import permute_nibbles, unpermute_nibbles

from accel.runtime.packing import pack_int32, unpack_int32


def test_slot_pairs_hold_adjacent_codes():
    gen = torch.Generator().manual_seed(0)
    q = torch.randint(-8, 8, (5, 64), generator=gen, dtype=torch.int8)
    words = permute_nibbles(pack_int32(q, 4))
    slots = unpack_int32(words, 4, (5, 64)).view(5, 8, 8)  # [row, word, slot]
    codes = q.view(5, 8, 8)
    for i in range(4):  # the GEMV's LOP3 takes slots i and i + 4 together: codes 2i and 2i + 1
        assert torch.equal(slots[..., i], codes[..., 2 * i])
        assert torch.equal(slots[..., i + 4], codes[..., 2 * i + 1])


def test_round_trip_and_sign_bit():
    gen = torch.Generator().manual_seed(1)
    words = torch.randint(-(2**31), 2**31 - 1, (7, 33), generator=gen, dtype=torch.int64).to(torch.int32)
    assert torch.equal(unpermute_nibbles(permute_nibbles(words)), words)
    assert permute_nibbles(words).dtype == torch.int32
    assert not torch.equal(permute_nibbles(words), words)


def test_prepare_leaves_cpu_weights_alone():
    """Off CUDA (the reference backend's tensors) prepare returns the artifact tensors untouched, no kwargs."""
    import pytest

    pytest.importorskip("triton")
    from accel_cuda.kernels.w4a16 import prepare

    words = pack_int32(torch.zeros(4, 256, dtype=torch.int8), 4)
    scale = torch.ones(4, 2)
    args, kwargs = prepare(words, scale, None, 128)
    assert args[0] is words and kwargs == {}
