"""The decode-attention launch plan (accel_cuda.kernels.attention.plan) on the CPU: no GPU needed to check which
launch a shape gets."""

from __future__ import annotations

import pytest

pytest.importorskip("triton")


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4"])
def test_more_programs_than_a_wave_take_small_tiles_and_a_register_cap(fmt: str) -> None:
    """Decode at batch 64 over Llama-3-8B's 8 KV heads: 512 (batch, head) programs, more than the 2-3 per SM x 132
    SMs a wave holds: 64-position tiles and 128 registers (4 programs per SM). Batch 16 at 32k keeps the split plan."""
    from accel_cuda.kernels.attention import plan

    wide = plan(64, 8, 4, 256, 128, fmt, 132)
    assert (wide.block_n, wide.max_regs, wide.chunk) == (64, 128, 256)
    long = plan(16, 8, 4, 32768, 128, fmt, 132)
    assert (long.block_n, long.max_regs) == (128, None) and long.chunk < 32768


def test_bf16_caches_and_one_wave_keep_the_default_tiles() -> None:
    from accel_cuda.kernels.attention import plan

    assert (plan(64, 8, 4, 256, 128, "none", 132).max_regs, plan(64, 8, 4, 256, 128, "none", 132).block_n) == (None, 64)
    assert plan(32, 8, 4, 256, 128, "int8", 132).max_regs is None  # 256 programs: one wave of 396
