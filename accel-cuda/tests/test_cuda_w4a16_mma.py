"""w4a16_mma (Gluon, mma.sync on fragment-ordered words): the packing on the CPU against mma.m16n8k16's A-fragment
definition, and the kernel against a float64 reference on a Hopper GPU (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch

gluon = pytest.importorskip("triton.experimental.gluon")
on_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs a Hopper GPU"
)


def unpack(words: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Codes [N, K] back from mma_pack's words by mma.m16n8k16's A fragment: lane L = 4 g + t holds rows g, g + 8 and
    columns 2t, 2t + 1, 2t + 8, 2t + 9 of each 16 x 16 tile; pair p = 2 jj + h at bits 4 p (low) and 16 + 4 p."""
    w = words.to(torch.int64) & 0xFFFFFFFF
    codes = torch.empty(n, k, dtype=torch.int64)
    for rb in range(n // 16):
        for chunk in range(k // 64):
            for lane in range(32):
                g, t = divmod(lane, 4)
                for j in range(4):
                    word = int(w[rb, chunk, 4 * lane + j])
                    for jj in range(2):
                        for h in range(2):
                            for e in range(2):
                                row, col = 16 * rb + 8 * h + g, 64 * chunk + 16 * j + 8 * jj + 2 * t + e
                                codes[row, col] = (word >> (4 * (2 * jj + h) + 16 * e)) & 0xF
    return codes


def test_mma_pack_puts_each_code_in_its_fragment_slot():
    from accel_cuda.kernels.w4a16_mma import mma_pack

    codes = torch.randint(0, 16, (32, 256), dtype=torch.uint8)
    words = mma_pack(codes)
    assert words.dtype == torch.int32 and tuple(words.shape) == (2, 4, 128)
    assert torch.equal(unpack(words, 32, 256), codes.to(torch.int64))


def test_mma_pack_names_the_shape_it_needs():
    from accel_cuda.kernels.w4a16_mma import mma_pack

    with pytest.raises(ValueError, match="N % 16 == 0 and K % 128 == 0"):
        mma_pack(torch.zeros(24, 128, dtype=torch.uint8))


def _case(m: int, n: int, k: int, seed: int):
    from accel_cuda.kernels.w4a16_mma import mma_pack

    gen = torch.Generator(device="cuda").manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), device="cuda", generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // 128, device="cuda", generator=gen) * 0.02 + 0.002).to(torch.bfloat16)
    x = torch.randn(m, k, device="cuda", generator=gen, dtype=torch.bfloat16)
    weight = q.double() * scale.double().repeat_interleave(128, 1)
    return x, mma_pack((q.to(torch.int16) + 8).to(torch.uint8)), scale.T.contiguous(), weight


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float("inf") if not torch.isfinite(out).all() else ((out.double() - ref).norm() / ref.norm()).item()


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("m", [1, 3, 8, 9, 16])
@pytest.mark.parametrize("n,k", [(1024, 1024), (4096, 14336), (6144, 4096)])
@pytest.mark.parametrize("cfg", [dict(block_n=64, split=1, stages=4, ng=1, gsum=0),
                                 dict(block_n=128, split=2, stages=3, ng=2, gsum=2),
                                 dict(block_n=256, num_warps=8, split=4, stages=3, ng=1, gsum=1),
                                 dict(block_n=128, num_warps=4, split=2, stages=3, ng=1, warp_specialize=True)])
def test_w4a16_mma_matches_float64(m, n, k, cfg):
    from accel_cuda.kernels.w4a16_mma import w4a16_mma

    x, words, scales_t, weight = _case(m, n, k, seed=m + n)
    ref = x.double() @ weight.T
    if (k // 128 // cfg["ng"]) % cfg["split"]:
        pytest.skip("split does not divide the steps")
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)  # poisoned: every element written
    w4a16_mma(x, words, scales_t, block_m=8 if m <= 8 else 16, out=out, **cfg)
    assert _rel(out, ref) < 1e-2


@pytest.mark.gpu
@on_hopper
def test_w4a16_mma_replays_in_a_cuda_graph():
    """Split-K's counters reset themselves: every replay of a captured call on fresh x is right."""
    from accel_cuda.kernels.w4a16_mma import w4a16_mma

    x, words, scales_t, weight = _case(1, 4096, 4096, seed=3)
    out = torch.empty(1, 4096, device="cuda", dtype=torch.bfloat16)
    w4a16_mma(x, words, scales_t, block_n=64, split=4, stages=4, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w4a16_mma(x, words, scales_t, block_n=64, split=4, stages=4, out=out)
    for _ in range(3):
        x.normal_()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(out, x.double() @ weight.T) < 1e-2
