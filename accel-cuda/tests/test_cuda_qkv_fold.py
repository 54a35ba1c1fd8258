"""RoPE and the 16-bit KV cache write folded into the q/k/v TMA decode GEMV (accel_cuda.kernels.qkv_fold) on a real
Hopper GPU: the epilogue against float64 (q rotated, k rotated and v in the cache, poisoned outputs, untouched cache
positions), bit for bit the rope_kv_write kernel on the same linear output, the op against its reference (and its
fallback for a quantized cache), and a W4A16 decode step with the fold against the unfused one."""

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
# (H, Hkv, D, K): Llama-3-8B's q/k/v; a small GQA layout with head_dim 64
LAYOUTS = [(32, 8, 128, 4096), (4, 2, 64, 2048)]
_seed = iter(range(1_000_000))


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin over the last dimension (float64; cos / sin broadcast over heads)."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def case(b: int, layout: tuple[int, int, int, int], dtype: torch.dtype, seq: int = 64):
    """Weights (permuted words, group-128 scales, float64 W), x, RoPE tables at each row's position, positions
    (one outside the cache for b > 2), NaN-poisoned caches."""
    from accel_cuda.kernels.nibbles import permute_nibbles

    h, hkv, d, k = layout
    n = (h + 2 * hkv) * d
    gen = torch.Generator(device="cuda").manual_seed(9000 + next(_seed))
    q = torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(dtype)
    cols = torch.arange(k, device="cuda") // 128
    w = q.double() * scale.double()[:, cols]
    x = torch.randn(b, 1, k, generator=gen, device="cuda").to(dtype)
    positions = torch.randint(0, seq, (b, 1), generator=gen, device="cuda")
    if b > 2:
        positions[2, 0] = seq + 5  # outside the cache: skipped
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, d, 2, device="cuda", dtype=torch.float64) / d)
    angle = positions.double()[..., None] * inv_freq
    angle = torch.cat((angle, angle), -1)  # [B, 1, D]
    cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
    k_cache = torch.full((b + 1, hkv, seq, d), float("nan"), dtype=dtype, device="cuda")
    v_cache = torch.full_like(k_cache, float("nan"))
    return x, permute_nibbles(pack_int32(q, 4)), scale, w, cos, sin, positions, k_cache, v_cache


@pytest.mark.parametrize("rms", [False, True], ids=["plain", "rms"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", LAYOUTS, ids=[f"h{h}kv{kv}d{d}k{k}" for h, kv, d, k in LAYOUTS])
@pytest.mark.parametrize(("b", "block_n", "ng", "stages"), [(1, 32, 8, 3), (1, 16, 16, 2), (3, 64, 8, 3)])
def test_rope_epilogue_matches_float64(b, block_n, ng, stages, layout, dtype, rms):
    from accel_cuda.kernels.w4a16_gemv_tma import RopeKV, TmaGemvConfig, supports_tma, w4a16_tma_gemv

    h, hkv, d, k = layout
    n = (h + 2 * hkv) * d
    cfg = TmaGemvConfig(block_n=block_n, ng=ng, split=1, stages=stages)
    if not supports_tma(n, k, cfg):
        pytest.skip(f"{cfg} does not tile {n}x{k}")
    x, words, scale, w, cos, sin, positions, k_cache, v_cache = case(b, layout, dtype)
    y = x.double() @ w.T  # [B, 1, N]
    ss = None
    if rms:
        ss = (x.float().pow(2).reshape(b, 1, 8, -1).sum(-1) * 2).contiguous()
        y = y * torch.rsqrt(ss.double().sum(-1, keepdim=True) / k + 1e-5)
    q_out = torch.full((b, 1, h, d), float("nan"), dtype=dtype, device="cuda")
    rope = RopeKV(cos, sin, positions, q_out, k_cache, v_cache, h)
    got = w4a16_tma_gemv(x, words, scale, None, config=cfg, rope=rope, rms=None if ss is None else (ss, 1e-5))
    assert got is q_out
    qy, ky, vy = y.split([h * d, hkv * d, hkv * d], -1)
    c, s = cos.double()[:, :, None], sin.double()[:, :, None]
    assert relative_error(got, rotate(qy.view(b, 1, h, d), c, s)) < BOUND[dtype]
    k_want = rotate(ky.view(b, 1, hkv, d), c, s)
    v_want = vy.view(b, 1, hkv, d)
    written = torch.zeros_like(k_cache, dtype=torch.bool)
    for row in range(b):
        pos = int(positions[row, 0])
        if pos >= k_cache.shape[2]:
            continue
        written[row, :, pos] = True
        assert relative_error(k_cache[row, :, pos], k_want[row, 0]) < BOUND[dtype]
        assert relative_error(v_cache[row, :, pos], v_want[row, 0]) < BOUND[dtype]
    assert k_cache[~written].isnan().all() and v_cache[~written].isnan().all()  # nothing else touched


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rope_epilogue_is_rope_kv_write_on_the_same_linear_output(dtype):
    """Bit for bit: the fused epilogue rounds the linear's output to x's dtype, then rotates as rope_kv_write.py does,
    so fused == rope_kv_write(the plain GEMV's output) exactly, the plain GEMV launched with the fused one's tiles
    (block_n / 2 rows: the same float32 reduction order per row)."""
    from accel_cuda.kernels.rope_kv_write import rotary_kv_cache_write
    from accel_cuda.kernels.w4a16_gemv_tma import RopeKV, TmaGemvConfig, w4a16_tma_gemv

    h, hkv, d, _ = LAYOUTS[0]
    cfg = TmaGemvConfig(block_n=32, ng=8, split=1, stages=3)
    x, words, scale, _, cos, sin, positions, k_cache, v_cache = case(2, LAYOUTS[0], dtype)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q = w4a16_tma_gemv(x, words, scale, None, config=cfg,
                       rope=RopeKV(cos, sin, positions, torch.empty(2, 1, h, d, dtype=dtype, device="cuda"), k_cache,
                                   v_cache, h))
    y = w4a16_tma_gemv(x, words, scale, None, config=TmaGemvConfig(block_n=16, ng=8, split=1, stages=3))
    qy, ky, vy = y.split([h * d, hkv * d, hkv * d], -1)
    q_ref = rotary_kv_cache_write(qy.view(2, 1, h, d), ky.view(2, 1, hkv, d), vy.view(2, 1, hkv, d), cos, sin,
                                  positions, k_ref, None, None, v_ref, None, None, "none")
    assert torch.equal(q, q_ref)
    assert torch.equal(k_cache.nan_to_num(7.0), k_ref.nan_to_num(7.0))
    assert torch.equal(v_cache.nan_to_num(7.0), v_ref.nan_to_num(7.0))


def test_rope_epilogue_refuses_what_it_cannot_tile():
    from accel_cuda.kernels.w4a16_gemv_tma import RopeKV, TmaGemvConfig, w4a16_tma_gemv

    h, _, d, _ = LAYOUTS[0]
    x, words, scale, _, cos, sin, positions, k_cache, v_cache = case(1, LAYOUTS[0], torch.bfloat16)
    rope = RopeKV(cos, sin, positions, torch.empty(1, 1, h, d, dtype=torch.bfloat16, device="cuda"), k_cache, v_cache,
                  h)
    with pytest.raises(ValueError, match="RoPE epilogue"):
        w4a16_tma_gemv(x, words, scale, None, config=TmaGemvConfig(block_n=32, ng=8, split=2), rope=rope)
    with pytest.raises(ValueError, match="RoPE epilogue"):  # half tiles of 128 rows do not divide D / 2 = 64
        w4a16_tma_gemv(x, words, scale, None, config=TmaGemvConfig(block_n=256, ng=8, split=1), rope=rope)


@pytest.mark.parametrize("fmt", ["none", "int8"])
@pytest.mark.parametrize("rms", [False, True], ids=["plain", "rms"])
def test_op_matches_the_reference(fmt, rms):
    """The registered op (through prepare's permuted words) against accel.runtime.qkv_fold_ops' reference: q and the
    dequantized stores; "none" runs the fused epilogue where the table plans the GEMV, "int8" the fallback."""
    from accel_cuda.kernels import qkv_fold, w4a16_prepare
    from accel_cuda.platform import CudaPlatform

    from accel.plugins import load_registry
    from accel.runtime.kv_cache import StaticKVCache
    from accel.runtime.kv_ops import kv_dequantize
    from accel.runtime.qkv_fold_ops import w4a16_linear_rope_kv

    h, hkv, d, k = LAYOUTS[0]
    n = (h + 2 * hkv) * d
    gen = torch.Generator(device="cuda").manual_seed(5)
    packed = pack_int32(torch.randint(-8, 8, (n, k), generator=gen, device="cuda", dtype=torch.int8), 4)
    scale = (torch.rand(n, k // 128, generator=gen, device="cuda") * 0.02 + 0.002).to(torch.bfloat16)
    (words, scale_p, zp, group), kwargs = w4a16_prepare(packed, scale, None, 128)
    x, _, _, _, cos, sin, positions, _, _ = case(1, LAYOUTS[0], torch.bfloat16)
    ss = (x.float().pow(2).reshape(1, 1, 4, -1).sum(-1)).contiguous() if rms else None
    op = load_registry().select_kernel("w4a16_linear_rope_kv", CudaPlatform.capability())
    assert op.backend == "cuda"
    caches = [StaticKVCache(1, 1, hkv, 64, d, kv_format=fmt, dtype=torch.bfloat16, device="cuda") for _ in range(2)]
    got = op.impl(x, words, scale_p, zp, group, ss, 1e-5, cos, sin, positions, *caches[0].layer_stores(0), fmt, h,
                  **kwargs)
    want = w4a16_linear_rope_kv(x, packed, scale, None, 128, ss, 1e-5, cos, sin, positions,
                                *caches[1].layer_stores(0), fmt, h)
    assert got.shape == want.shape == (1, 1, h, d)
    assert relative_error(got, want.double()) < 1e-2
    for got_store, want_store in zip(caches[0].keys[0] + caches[0].values[0], caches[1].keys[0] + caches[1].values[0],
                                     strict=True):
        assert (got_store is None) == (want_store is None)
    for side in ("keys", "values"):
        got_kv = kv_dequantize(getattr(caches[0], side)[0], fmt, torch.float32)
        want_kv = kv_dequantize(getattr(caches[1], side)[0], fmt, torch.float32)
        assert relative_error(got_kv, want_kv.double()) < 2e-2
    accepted = qkv_fold.accepts(1, torch.bfloat16, x.device, words, scale_p, zp, group, **kwargs, kv_format=fmt,
                                head_dim=d, num_heads=h)
    if torch.cuda.get_device_name() in ("NVIDIA H200", "NVIDIA H100 80GB HBM3"):
        assert accepted == (fmt == "none")


@pytest.mark.parametrize("kv_format", ["none", "int8"])
def test_decode_with_the_rope_fold_matches_the_unfused_step(kv_format):
    """A Llama-3-8B-shaped W4A16 model cut to 2 layers: decode steps at batch 1 with RoPE and the cache write inside
    q/k/v (the default where the CUDA kernel runs the op for a 16-bit cache) against unfused steps; the rope_kv_write
    launches are gone from the folded step."""
    from transformers import LlamaConfig

    from accel.runtime.model import random_model

    config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=2,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=512)
    runtime = random_model(config, dtype=torch.bfloat16, device="cuda", quant="w4a16", kv_format=kv_format)
    cache = runtime.new_cache(1, 64)
    folds = runtime.folds_rope(1, cache)
    if kv_format != "none":
        assert not folds  # a quantized cache keeps rope_kv_write
    elif not folds:
        pytest.skip(f"no tuned TMA GEMV launch folds q/k/v on {torch.cuda.get_device_name()}")
    else:
        assert runtime.kernel_meta()["w4a16_linear_rope_kv"] == "cuda"
    prompts = torch.arange(1, 9, device="cuda")[None]

    def steps(fold: bool) -> list[torch.Tensor]:
        runtime.fold_rope = None if fold else False
        cache = runtime.new_cache(1, 64)
        with torch.no_grad():
            runtime.prefill(prompts, torch.full((1,), 8, device="cuda"), cache)
            return [runtime.decode(torch.full((1, 1), t, device="cuda"), cache).float() for t in (5, 17, 99)]

    folded, unfused = steps(True), steps(False)
    for got, want in zip(folded, unfused, strict=True):
        assert relative_error(got, want.double()) < 2e-2
    runtime.fold_rope = None
    cache = runtime.new_cache(1, 64)
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        runtime.decode(torch.full((1, 1), 3, device="cuda"), cache)
        torch.cuda.synchronize()
    launches = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    rope_writes = [name for name in launches if "_rope_kv_write_kernel" in name]
    assert len(rope_writes) == (0 if folds else 2), launches
