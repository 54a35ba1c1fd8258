"""w4a16_wgmma (Gluon, wgmma with the dequantization overlapped) against a float64 reference on a Hopper GPU, and
its argument checks on the CPU."""

from __future__ import annotations

import pytest
import torch

gluon = pytest.importorskip("triton.experimental.gluon")
on_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9, reason="needs a Hopper GPU"
)


def _case(m: int, n: int, k: int, seed: int, asym: bool, device: str = "cuda"):
    """x, permute_nibbles' words, scales, zero points (or None) and the float64 weight (q - zp) * s rounded to bf16
    as the reference dequantizes it."""
    from accel_cuda.kernels.nibbles import permute_nibbles

    from accel.runtime.packing import pack_int32

    gen = torch.Generator(device=device).manual_seed(seed)
    q = torch.randint(-8, 8, (n, k), device=device, generator=gen, dtype=torch.int8)
    scale = (torch.rand(n, k // 128, device=device, generator=gen) * 0.02 + 0.002).to(torch.bfloat16)
    zero = torch.randint(-3, 4, (n, k // 128), device=device, generator=gen, dtype=torch.int8) if asym else None
    x = torch.randn(m, k, device=device, generator=gen, dtype=torch.bfloat16)
    zp = zero.double().repeat_interleave(128, 1) if asym else 0.0
    weight = ((q.double() - zp) * scale.double().repeat_interleave(128, 1)).to(torch.bfloat16).double()
    return x, permute_nibbles(pack_int32(q, 4)), scale, zero, weight


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float("inf") if not torch.isfinite(out).all() else ((out.double() - ref).norm() / ref.norm()).item()


def test_w4a16_wgmma_names_what_does_not_tile():
    from accel_cuda.kernels.w4a16_wgmma import w4a16_wgmma

    x, words, scale, zero, _ = _case(65, 128, 256, seed=0, asym=False, device="cpu")
    with pytest.raises(ValueError, match="M=65 N=128 K=256"):
        w4a16_wgmma(x, words, scale, zero, block_m=64)
    with pytest.raises(ValueError, match="warps_m"):
        w4a16_wgmma(x[:8], words, scale, zero, block_m=8, warps_m=2)


@pytest.mark.gpu
@on_hopper
@pytest.mark.parametrize("m", [1, 17, 33, 64, 100, 128])
@pytest.mark.parametrize("n,k,asym", [(1024, 2048, False), (4096, 14336, False), (6144, 4096, True)])
@pytest.mark.parametrize("cfg", [dict(block_n=64, stages=4, split=1, warps_m=1),
                                 dict(block_n=64, stages=3, split=2, warps_m=2),
                                 dict(block_n=128, stages=2, split=4, warps_m=2)])
def test_w4a16_wgmma_matches_float64(m, n, k, asym, cfg):
    from accel_cuda.kernels.w4a16_wgmma import w4a16_wgmma

    x, words, scale, zero, weight = _case(m, n, k, seed=m + n, asym=asym)
    ref = x.double() @ weight.T
    block_m = max(16, 1 << (m - 1).bit_length())
    out = torch.full((m, n), float("nan"), device="cuda", dtype=torch.bfloat16)  # poisoned: every element written
    w4a16_wgmma(x, words, scale, zero, block_m=block_m, out=out, **cfg)
    assert _rel(out, ref) < 4e-3  # the bf16 output's own rounding is ~1.7e-3


@pytest.mark.gpu
@on_hopper
def test_w4a16_wgmma_replays_in_a_cuda_graph():
    """Split-K's counters reset themselves: every replay of a captured call on fresh x is right."""
    from accel_cuda.kernels.w4a16_wgmma import w4a16_wgmma

    x, words, scale, zero, weight = _case(64, 4096, 4096, seed=3, asym=False)
    out = torch.empty(64, 4096, device="cuda", dtype=torch.bfloat16)
    w4a16_wgmma(x, words, scale, zero, block_m=64, split=4, stages=3, out=out)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        w4a16_wgmma(x, words, scale, zero, block_m=64, split=4, stages=3, out=out)
    for _ in range(3):
        x.normal_()
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert _rel(out, x.double() @ weight.T) < 4e-3
