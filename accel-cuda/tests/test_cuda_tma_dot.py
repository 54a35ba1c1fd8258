"""The TMA-pipelined tensor-core W4A16 / W8A16 kernel (wxa16_tma_dot) on a real Hopper GPU against float64, on fresh
random inputs per case (odd M, split-K, stage counts, poisoned outputs under graph replay); the W4A16 op and the
CUDA dequant_linear choosing it."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.packing import pack_int32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                       reason="needs a Hopper (sm_90) GPU"),
]

# Weights rounded once to x's dtype after scaling (as the reference dequantizes), fp32 accumulation, output rounding.
BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}
_seed = iter(range(1_000_000))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def make_case(bits: int, m: int, n: int, k: int, zero_point: bool, groups: int, dtype: torch.dtype):
    """Random codes (4-bit as permuted words), scales, int8 zero points or None, x, and float64 W [N, K]."""
    from accel_cuda.kernels.nibbles import permute_nibbles

    gen = torch.Generator(device="cuda").manual_seed(5000 + next(_seed))
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    q = torch.randint(lo, hi, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    zp = torch.randint(-8, 8, (n, groups), generator=gen, device="cuda", dtype=torch.int8) if zero_point else None
    cols = torch.arange(k, device="cuda") * groups // k
    w = (q.double() - (zp.double()[:, cols] if zp is not None else 0.0)) * scale.double()[:, cols]
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    weight = permute_nibbles(pack_int32(q, 4)) if bits == 4 else q
    return x, weight, scale, zp, w


CONFIGS = [  # (M, block_n, block_m, ng, split, stages, warps)
    (3, 64, 16, 1, 1, 4, 4),
    (5, 64, 16, 2, 4, 3, 4),
    (16, 128, 16, 1, 2, 4, 4),
    (17, 64, 32, 1, 2, 4, 4),
    (64, 128, 64, 1, 1, 3, 8),
    (100, 64, 128, 1, 2, 3, 8),
    (128, 128, 128, 2, 1, 2, 8),
]
SHAPES = [(1024, 4096), (512, 2048), (4096, 14336)]


VARIANTS = [(4, False, False), (4, True, False), (8, False, False), (8, True, False), (8, False, True), (8, True, True)]
VARIANT_IDS = ["w4-sym", "w4-asym", "w8-sym", "w8-asym", "w8-channel", "w8-channel-asym"]
# Every config on every variant in bf16 (each on one of the shapes, in turn); fp16 on two configs.
CASES = [(*cfg, *SHAPES[(i + j) % len(SHAPES)], *variant, torch.bfloat16)
         for i, cfg in enumerate(CONFIGS) for j, variant in enumerate(VARIANTS)]
CASES += [(*CONFIGS[i], *SHAPES[1], *variant, torch.float16) for i in (0, 4) for variant in VARIANTS]
CASE_IDS = [f"m{c[0]}-bn{c[1]}-bm{c[2]}-ng{c[3]}-split{c[4]}-{c[7]}x{c[8]}-{VARIANT_IDS[VARIANTS.index(c[9:12])]}-"
            f"{str(c[12])[6:]}" for c in CASES]


@pytest.mark.parametrize(("m", "block_n", "block_m", "ng", "split", "stages", "warps", "n", "k", "bits", "zero_point",
                          "per_channel", "dtype"), CASES, ids=CASE_IDS)
def test_tma_dot_matches_float64(m, block_n, block_m, ng, split, stages, warps, n, k, bits, zero_point, per_channel,
                                 dtype):
    from accel_cuda.kernels.wxa16_tma_dot import TmaDotConfig, supports_tma_dot, wxa16_tma_dot

    groups = 1 if per_channel else k // 128
    cfg = TmaDotConfig(block_n, block_m, ng, split, stages, warps)
    assert supports_tma_dot(n, k, groups, cfg, bits, zero_point), f"{cfg} does not tile {n}x{k}"
    x, weight, scale, zp, w = make_case(bits, m, n, k, zero_point, groups, dtype)
    expected = x.double() @ w.T
    for _ in range(2):  # split-K counters are left at zero for the next call
        got = wxa16_tma_dot(x, weight, scale, zp, bits=bits, config=cfg)
        assert got.shape == (m, n) and got.dtype == dtype
        assert relative_error(got, expected) < BOUND[dtype]


def test_supports_tma_dot_refuses_what_does_not_tile():
    from accel_cuda.kernels.wxa16_tma_dot import TmaDotConfig, supports_tma_dot

    cfg = TmaDotConfig(block_n=64, block_m=16, ng=1, split=4)
    assert supports_tma_dot(1024, 4096, 32, cfg, 4)
    assert not supports_tma_dot(1000, 4096, 32, cfg, 4)  # rows not a multiple of block_n
    assert not supports_tma_dot(1024, 4096, 64, cfg, 4)  # group size 64
    assert not supports_tma_dot(1024, 4096, 1, cfg, 4)  # per channel: 8-bit only
    assert supports_tma_dot(1024, 4096, 1, cfg, 8)
    assert not supports_tma_dot(1024, 1536, 12, cfg, 8)  # 12 groups: scale rows not 16-byte aligned
    assert not supports_tma_dot(1024, 14336, 112, TmaDotConfig(split=3), 8)  # 112 steps not divisible by 3


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("split", [1, 4])
def test_tma_dot_writes_every_element_under_a_graph(split, bits):
    from accel_cuda.kernels.wxa16_tma_dot import TmaDotConfig, wxa16_tma_dot

    n, k, m = 512, 4096, 37
    x, weight, scale, _, w = make_case(bits, m, n, k, False, k // 128, torch.bfloat16)
    cfg = TmaDotConfig(block_n=64, block_m=16, ng=1, split=split, stages=4)
    out = torch.full((m, n), float("nan"), dtype=torch.bfloat16, device="cuda")
    wxa16_tma_dot(x, weight, scale, None, bits=bits, config=cfg, out=out)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        wxa16_tma_dot(x, weight, scale, None, bits=bits, config=cfg, out=out)
    for _ in range(3):
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        assert relative_error(out, x.double() @ w.T) < BOUND[torch.bfloat16]


@pytest.fixture
def tma_dot_calls(monkeypatch):
    """Records the config of every wxa16_tma_dot call (the real kernel still runs)."""
    from accel_cuda.kernels import wxa16_tma_dot as td

    calls = []
    real = td.wxa16_tma_dot
    monkeypatch.setattr(td, "wxa16_tma_dot", lambda *a, **kw: calls.append(kw["config"]) or real(*a, **kw))
    return calls


@pytest.mark.parametrize("zero_point", [False, True], ids=["sym", "asym"])
def test_w4a16_op_takes_the_tensor_core_kernel_from_m3(tma_dot_calls, zero_point):
    from accel_cuda.kernels.w4a16 import w4a16_linear

    n, k = 1024, 4096
    for m in (1, 2, 3, 16, 64, 128):
        x, words, scale, zp, w = make_case(4, m, n, k, zero_point, k // 128, torch.bfloat16)
        before = len(tma_dot_calls)
        got = w4a16_linear(x, words, scale, zp, 128, permuted=True)
        assert len(tma_dot_calls) - before == (1 if m >= 3 else 0), f"M={m}"
        assert relative_error(got, x.double() @ w.T) < BOUND[torch.bfloat16]


@pytest.mark.parametrize("per_channel", [False, True], ids=["group128", "channel"])
def test_dequant_linear_takes_the_tensor_core_kernel(tma_dot_calls, per_channel):
    """accel-cuda's dequant_linear (the registered kernel) runs the 8-bit kernel with a bias; M above 128 takes the
    dequantize-then-cuBLAS path."""
    from accel_cuda.platform import CudaPlatform

    from accel.plugins import load_registry

    n, k = 1024, 2048
    groups = 1 if per_channel else k // 128
    impl = load_registry().select_kernel("dequant_linear", CudaPlatform.capability()).impl
    for m in (1, 7, 128):
        x, q, scale, zp, w = make_case(8, m, n, k, True, groups, torch.bfloat16)
        bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
        got = impl(x.reshape(1, m, k), q, scale, zp, -1 if per_channel else 128, bias)
        assert got.shape == (1, m, n)
        assert relative_error(got.reshape(m, n), x.double() @ w.T + bias.double()) < BOUND[torch.bfloat16]
    assert len(tma_dot_calls) == 3
    x, q, scale, zp, w = make_case(8, 129, n, k, True, groups, torch.bfloat16)
    got = impl(x, q, scale, zp, -1 if per_channel else 128)
    assert len(tma_dot_calls) == 3
    assert relative_error(got, x.double() @ w.T) < BOUND[torch.bfloat16]


@pytest.mark.parametrize(("m", "n", "k", "group", "zero_point"),
                         [(129, 1024, 2048, 128, True), (300, 72, 200, 64, True), (5, 96, 200, -1, False),
                          (3, 64, 256, 32, False)])
def test_dequant_linear_dequantize_path_matches_float64(tma_dot_calls, m, n, k, group, zero_point):
    """Above M=128 and for shapes the tensor-core kernel does not take (group 64 / 32, K=200 with a partial last
    group), accel-cuda's dequant_linear dequantizes with its Triton kernel, then cuBLAS."""
    from accel_cuda.kernels.w8a16 import dequant_linear

    gen = torch.Generator(device="cuda").manual_seed(7000 + next(_seed))
    groups = 1 if group <= 0 else -(-k // group)
    q = torch.randint(-128, 128, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, groups, generator=gen, device="cuda") * 2e-3 + 2e-4).to(torch.bfloat16)
    zp = torch.randint(-8, 8, (n, groups), generator=gen, device="cuda", dtype=torch.int8) if zero_point else None
    cols = torch.arange(k, device="cuda") // group if group > 0 else torch.zeros(k, dtype=torch.long, device="cuda")
    w = (q.double() - (zp.double()[:, cols] if zp is not None else 0.0)) * scale.double()[:, cols]
    x = torch.randn(m, k, generator=gen, device="cuda").to(torch.bfloat16)
    bias = torch.randn(n, generator=gen, device="cuda").to(torch.bfloat16)
    got = dequant_linear(x, q, scale, zp, group, bias)
    assert got.shape == (m, n) and got.dtype == torch.bfloat16 and not tma_dot_calls
    assert relative_error(got, x.double() @ w.T + bias.double()) < BOUND[torch.bfloat16]
