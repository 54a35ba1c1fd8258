"""RMSNorm folded into the TMA decode GEMV (accel_cuda.kernels.norm_fold) on a real Hopper GPU: the residual epilogue
and the rms scale against float64 on fresh random inputs (poisoned outputs, every row owned), h bit for bit as torch
adds, the ops' fallbacks, and a W4A16 decode step with the norms folded against the unfused one."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.packing import pack_int32

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] != 9,
                       reason="needs a Hopper (sm_90) GPU"),
]

BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3}  # the TMA GEMV's own bound (half-precision pair products)
SHAPES = [(4096, 4096), (6144, 4096), (512, 2048)]
_seed = iter(range(1_000_000))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def case(m: int, n: int, k: int, dtype: torch.dtype):
    """Symmetric int4 codes (permuted words), group-128 scales, x, and float64 W."""
    from accel_cuda.kernels.nibbles import permute_nibbles

    gen = torch.Generator(device="cuda").manual_seed(7000 + next(_seed))
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    cols = torch.arange(k, device="cuda") // 128
    w = q.double() * scale.double()[:, cols]
    x = torch.randn(m, k, generator=gen, device="cuda").to(dtype)
    return gen, x, permute_nibbles(pack_int32(q, 4)), scale, w


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize(("m", "block_n", "ng", "stages"), [(1, 16, 8, 3), (1, 32, 16, 4), (2, 16, 8, 2)])
def test_residual_epilogue_matches_float64(m, block_n, ng, stages, n, k, dtype):
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, supports_tma, w4a16_tma_gemv

    cfg = TmaGemvConfig(block_n=block_n, ng=ng, split=1, stages=stages)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    gen, x, words, scale, w = case(m, n, k, dtype)
    residual = (torch.randn(m, n, generator=gen, device="cuda") * 3).to(dtype)
    norm_weight = (1.0 + 0.5 * torch.randn(n, generator=gen, device="cuda")).to(dtype)
    hw = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    ss = torch.full((m, n // block_n), float("nan"), device="cuda")
    out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
    h = w4a16_tma_gemv(x, words, scale, None, config=cfg, out=out, residual=(residual, norm_weight, hw, ss))
    assert h is out and h.shape == (m, n) and h.dtype == dtype
    h64 = x.double() @ w.T + residual.double()
    assert relative_error(h, h64) < BOUND[dtype]
    assert relative_error(hw, h64 * norm_weight.double()) < BOUND[dtype]
    # h is the plain GEMV's output plus the residual as torch adds; h * w rounded once from float32
    plain = w4a16_tma_gemv(x, words, scale, None, config=cfg)
    assert torch.equal(h, plain + residual)
    assert torch.equal(hw, (h.float() * norm_weight.float()).to(dtype))
    # each program's sum of h^2 over its rows (of h as rounded)
    want_ss = h.double().pow(2).reshape(m, n // block_n, block_n).sum(-1)
    torch.testing.assert_close(ss.double(), want_ss, rtol=1e-5, atol=0)


def test_residual_epilogue_refuses_split_k():
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, w4a16_tma_gemv

    _, x, words, scale, _ = case(1, 512, 2048, torch.bfloat16)
    res = torch.zeros(1, 512, dtype=torch.bfloat16, device="cuda")
    ss = torch.empty(1, 512 // 16, device="cuda")
    with pytest.raises(ValueError, match="split 1"):
        w4a16_tma_gemv(x, words, scale, None, config=TmaGemvConfig(block_n=16, ng=8, split=2),
                       residual=(res, res[0], res.clone(), ss))
    with pytest.raises(ValueError, match="ss_out"):
        w4a16_tma_gemv(x, words, scale, None, config=TmaGemvConfig(block_n=16, ng=8, split=1),
                       residual=(res, res[0], res.clone(), ss[:, :8]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), SHAPES, ids=[f"{n}x{k}" for n, k in SHAPES])
@pytest.mark.parametrize(("m", "block_n", "ng", "split", "stages"),
                         [(1, 16, 8, 1, 3), (1, 32, 16, 1, 4), (2, 16, 8, 2, 2), (3, 16, 8, 4, 3)])
def test_rms_prologue_matches_float64(m, block_n, ng, split, stages, n, k, dtype):
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, supports_tma, w4a16_tma_gemv

    cfg = TmaGemvConfig(block_n=block_n, ng=ng, split=split, stages=stages)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    gen, _, words, scale, w = case(m, n, k, dtype)
    # rows of h of very different sizes (the scale must undo each); x = h * norm weight as the residual op leaves it,
    # and h's sums of squares in partial sums: 256 (a producer of 16-row programs over K = 4096), 5, 1
    h = (torch.randn(m, k, generator=gen, device="cuda") * torch.logspace(-2, 2, m, device="cuda")[:, None]).to(dtype)
    norm_weight = 1.0 + 0.5 * torch.randn(k, generator=gen, device="cuda")
    x = (h.float() * norm_weight).to(dtype)
    eps = 1e-5
    r = torch.rsqrt(h.double().pow(2).mean(-1, keepdim=True) + eps)
    expected = (x.double() @ w.T) * r
    squares = h.float().pow(2)
    for ss in (squares.reshape(m, k // 16, 16).sum(-1), squares[:, : 5 * (k // 5)].reshape(m, 5, -1).sum(-1)
               + torch.nn.functional.pad(squares[:, 5 * (k // 5):].sum(-1, keepdim=True), (0, 4)),
               squares.sum(-1, keepdim=True)):
        out = torch.full((m, n), float("nan"), dtype=dtype, device="cuda")
        got = w4a16_tma_gemv(x, words, scale, None, config=cfg, out=out, rms=(ss.contiguous(), eps))
        assert relative_error(got, expected) < BOUND[dtype]


@pytest.mark.parametrize("rms", [False, True], ids=["plain", "rms"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("n", "k"), [(28672, 4096), (1024, 2048)], ids=["28672x4096", "1024x2048"])
@pytest.mark.parametrize(("m", "block_n", "ng", "stages"), [(1, 32, 8, 2), (1, 16, 16, 3), (2, 32, 8, 3)])
def test_silu_epilogue_matches_float64(m, block_n, ng, stages, n, k, dtype, rms):
    """SwiGLU in the GEMV's epilogue (gate rows and the up rows I below them per program) against silu(g) * up of
    the float64 product, after the norm's scale where rms; every output element written (poisoned output)."""
    from accel_cuda.kernels.w4a16_gemv_tma import TmaGemvConfig, supports_tma, w4a16_tma_gemv

    cfg = TmaGemvConfig(block_n=block_n, ng=ng, split=1, stages=stages)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    _, x, words, scale, w = case(m, n, k, dtype)
    y = x.double() @ w.T
    ss = None
    if rms:
        ss = (x.float().pow(2).reshape(m, 16, -1).sum(-1) * 3).contiguous()  # h's sums of squares: any positive row
        y = y * torch.rsqrt(ss.double().sum(-1, keepdim=True) / k + 1e-5)
    gate, up = y.split(n // 2, -1)
    expected = gate * torch.sigmoid(gate) * up
    out = torch.full((m, n // 2), float("nan"), dtype=dtype, device="cuda")
    got = w4a16_tma_gemv(x, words, scale, None, config=cfg, out=out, silu=True, rms=None if ss is None else (ss, 1e-5))
    assert got is out
    assert relative_error(got, expected) < 2 * BOUND[dtype]  # the linear's bound, then silu's and the product's ulps


@pytest.mark.parametrize("m", [1, 4])  # 1: the folded GEMV where the table tuned the shape; 4: the fallback
def test_ops_match_the_references(m):
    """The registered ops (through prepare's permuted words) against accel.runtime.norm_fold_ops' references."""
    from accel_cuda.kernels import norm_fold, w4a16_prepare
    from accel_cuda.platform import CudaPlatform

    from accel.plugins import load_registry
    from accel.runtime.norm_fold_ops import w4a16_linear_residual, w4a16_linear_rms, w4a16_linear_silu_mul

    n, k = 4096, 4096
    gen, x, _, _, _ = case(m, n, k, torch.bfloat16)
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    packed = pack_int32(q, 4)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    (words, scale_p, zp, group), kwargs = w4a16_prepare(packed, scale, None, 128)
    registry = load_registry()
    residual_op = registry.select_kernel("w4a16_linear_residual", CudaPlatform.capability())
    rms_op = registry.select_kernel("w4a16_linear_rms", CudaPlatform.capability())
    assert residual_op.backend == rms_op.backend == "cuda"
    residual = (torch.randn(m, n, generator=gen, device="cuda") * 3).to(torch.bfloat16)
    norm_weight = (1.0 + 0.5 * torch.randn(n, generator=gen, device="cuda")).to(torch.bfloat16)
    h, hw, ss = residual_op.impl(x, words, scale_p, zp, group, residual, norm_weight, **kwargs)
    h_ref, hw_ref, ss_ref = w4a16_linear_residual(x, packed, scale, None, 128, residual, norm_weight)
    assert relative_error(h, h_ref.double()) < 1e-2 and relative_error(hw, hw_ref.double()) < 1e-2
    assert relative_error(ss.sum(-1), ss_ref.sum(-1).double()) < 1e-2
    y = rms_op.impl(hw, words, scale_p, zp, group, ss, 1e-5, **kwargs)
    y_ref = w4a16_linear_rms(hw, packed, scale, None, 128, ss_ref, 1e-5)
    assert relative_error(y, y_ref.double()) < 1e-2
    silu_op = registry.select_kernel("w4a16_linear_silu_mul", CudaPlatform.capability())
    for sums, sums_ref in ((None, None), (ss, ss_ref)):  # 4096 rows as gate | up of 2048
        act = silu_op.impl(hw, words, scale_p, zp, group, sums, 1e-5, **kwargs)
        act_ref = w4a16_linear_silu_mul(hw, packed, scale, None, 128, sums_ref, 1e-5)
        assert act.shape == (m, n // 2) and relative_error(act, act_ref.double()) < 2e-2
    planned = norm_fold.fold_plan(x, words, scale_p, zp, group, True)
    name = torch.cuda.get_device_name()
    if m == 1 and name in ("NVIDIA H200", "NVIDIA H100 80GB HBM3"):
        assert planned is not None and planned.split == 1  # the tuned M=1 launch of 4096x4096
    if m == 4:
        assert planned is None  # M = 4 runs the tensor-core kernel: the ops fall back to it and torch


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("quantize_lm_head", [False, True], ids=["bf16-head", "int4-head"])
def test_decode_with_folded_norms_matches_the_unfused_step(quantize_lm_head, batch):
    """A Llama-3-8B-shaped W4A16 model cut to 2 layers, random weights and spread norm weights: decode steps at batch
    1 and 2 folded (the default where the CUDA kernels run the folding ops) against unfused steps; the norms' launches
    are gone from the folded step."""
    from transformers import LlamaConfig

    from accel.runtime.model import RMSNorm, random_model

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512)
    runtime = random_model(config, dtype=torch.bfloat16, device="cuda", quant="w4a16",
                           quantize_lm_head=quantize_lm_head)
    gen = torch.Generator(device="cuda").manual_seed(11)
    for module in runtime.modules():
        if isinstance(module, RMSNorm):
            module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=gen, device="cuda"))
    if not runtime.folds_norms():
        pytest.skip(f"no tuned TMA GEMV launch folds these shapes on {torch.cuda.get_device_name()}")
    meta = runtime.kernel_meta()
    assert meta["w4a16_linear_residual"] == meta["w4a16_linear_rms"] == meta["w4a16_linear_silu_mul"] == "cuda"
    # batch 1 folds on the tuned shapes; at batch 2 a card's table may send a shape to the tensor-core kernel instead
    # (the H200's does for some), and then the step runs unfused
    folds = runtime.folds_silu(batch)
    assert folds == runtime.folds_norms(batch) and (folds or batch > 1)
    prompts = torch.arange(1, 9, device="cuda").repeat(batch, 1) * torch.arange(1, batch + 1, device="cuda")[:, None]

    def steps(fold: bool) -> list[torch.Tensor]:
        runtime.fold_norms = None if fold else False
        cache = runtime.new_cache(batch, 64)
        with torch.no_grad():
            runtime.prefill(prompts, torch.full((batch,), 8, device="cuda"), cache)
            out = [runtime.decode(torch.full((batch, 1), t, device="cuda"), cache).float() for t in (5, 17, 99)]
        return out

    folded, unfused = steps(True), steps(False)
    for got, want in zip(folded, unfused, strict=True):
        assert relative_error(got, want.double()) < 2e-2
    runtime.fold_norms = None
    cache = runtime.new_cache(batch, 64)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        runtime.decode(torch.full((batch, 1), 3, device="cuda"), cache)
        torch.cuda.synchronize()
    launches = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    norms = [name for name in launches if "_rms_norm_kernel" in name]
    swiglu = [name for name in launches if "silu_and_mul" in name]
    if folds:  # SwiGLU inside gate/up; the norms left: the first layer's input norm, the final one before a bf16 head
        assert not swiglu and len(norms) == (1 if quantize_lm_head else 2), launches
    else:
        assert len(swiglu) == 2 and len(norms) == 5, launches
