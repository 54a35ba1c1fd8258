"""The fused KV cache write on a real GPU: the Triton kernel stores exactly the bytes torch's reference stores on the
same device (codes, scales, zero points; untouched bytes of poisoned stores left alone), under CUDA-graph replay,
and wherever the runtime reaches it (StaticKVCache, the registry, the custom op, torch.compile)."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
_seed = iter(range(1_000_000))


def generator() -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(7000 + next(_seed))


def poisoned(rows, h, cap, d, fmt, dtype, gen):
    """[k_codes, k_scale, k_zero, v_codes, v_scale, v_zero] of random bytes (NaN, inf, signalling NaN among them)."""
    stores = []
    for _ in range(2):
        for part in kv_quantize(torch.zeros(1, 1, 1, d, dtype=dtype, device="cuda"), fmt):
            if part is None:
                stores.append(None)
                continue
            shape = (rows, h, cap, part.shape[-1] * part.element_size())
            raw = torch.randint(0, 256, shape, generator=gen, device="cuda", dtype=torch.int32)
            stores.append(raw.to(torch.uint8).view(part.dtype))
    return stores


def make_case(b, rows, h, t, d, cap, fmt, dtype, scale=3.0):
    """K and V [B, H, T, D] laid out as the model makes them ([B, T, H, D] in memory), distinct random positions
    per row, and poisoned stores of `rows` >= B rows."""
    gen = generator()
    k, v = ((torch.randn(b, t, h, d, generator=gen, device="cuda") * scale).transpose(1, 2).to(dtype) for _ in "kv")
    positions = torch.stack([torch.randperm(cap, generator=gen, device="cuda")[:t] for _ in range(b)])
    return k, v, positions, poisoned(rows, h, cap, d, fmt, dtype, gen)


def run(*args, **kwargs):
    from accel_cuda.kernels.kv_write import kv_cache_write as kernel

    kernel(*args, **kwargs)


def differing_bytes(got, want) -> list[int]:
    """Per store, how many bytes differ (0 everywhere: exact)."""
    return [
        0 if g is None else int((g.view(torch.uint8) != w.view(torch.uint8)).sum())
        for g, w in zip(got, want, strict=True)
    ]


def check_exact(k, v, positions, stores, fmt, **kwargs):
    """The kernel's stores against the reference's, both on this GPU, from the same poisoned start."""
    expected = [None if s is None else s.clone() for s in stores]
    kv_cache_write(k, v, positions, *expected, fmt)
    run(k, v, positions, *stores, fmt, **kwargs)
    torch.cuda.synchronize()
    diff = differing_bytes(stores, expected)
    assert diff == [0] * 6, f"{fmt}: bytes differing per store (k codes, scale, zero, v codes, scale, zero): {diff}"


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("b", "rows", "h", "t", "d", "cap"),
    [
        (1, 1, 8, 1, 128, 4096),  # Llama-3-8B decode, batch 1
        (16, 32, 8, 1, 128, 2048),  # decode into the first 16 rows of a 32-row cache
        (1, 1, 8, 2048, 128, 2048),  # a 2k prefill
        (3, 4, 2, 5, 96, 40),  # odd head_dim (int4: 3 groups), T = 5
        (2, 3, 3, 37, 64, 100),  # token blocks with a partial last one
    ],
)
def test_matches_the_reference_exactly(fmt, dtype, b, rows, h, t, d, cap):
    if fmt == "int4" and d % 32:
        pytest.skip("int4 needs head_dim divisible by 32")
    check_exact(*make_case(b, rows, h, t, d, cap, fmt, dtype), fmt)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rounding_ties_match(fmt, dtype):
    """Tokens whose max |x| is qmax (127 or 448) times a power of two: s is a power of two up to torch's reciprocal
    rounding (CUDA multiplies max|x| by fp32(1 / qmax)), and x / s lands on or next to .5 for half the values, so a
    one-ulp difference in s flips codes."""
    gen = generator()
    b, h, t, d, cap = 4, 8, 16, 128, 64
    halves = torch.randint(-254, 255, (b, h, t, d), generator=gen, device="cuda").float() / 2  # k + 0.5 often
    qmax = 448.0 if fmt == "fp8" else 127.0
    halves[..., 0] = qmax  # max|x| = qmax exactly
    exponents = torch.randint(-6, 6, (b, h, t, 1), generator=gen, device="cuda").float()
    k = (halves * torch.exp2(exponents)).to(dtype)
    v = (-k).contiguous()
    positions = torch.stack([torch.randperm(cap, generator=gen, device="cuda")[:t] for _ in range(b)])
    check_exact(k, v, positions, poisoned(b, h, cap, d, fmt, dtype, gen), fmt)


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_special_tokens(fmt):
    """All-zero tokens (with a -0.0), constant tokens, tiny ones (int4's fp16 scale subnormal) and large ones."""
    k, v, positions, stores = make_case(2, 2, 8, 4, 128, 16, fmt, torch.bfloat16)
    for x in (k, v):
        x[:, :, 0] = 0.0
        x[:, :, 0, 1] = -0.0
        x[:, :, 1] = 0.75
        x[:, :, 2] *= 1e-4
        x[:, :, 3] *= 300.0
    check_exact(k, v, positions, stores, fmt)


def test_out_of_range_positions_are_skipped():
    k, v, _, stores = make_case(1, 1, 2, 4, 64, 8, "int8", torch.bfloat16)
    expected = [None if s is None else s.clone() for s in stores]
    kv_cache_write(k[:, :, 1:3], v[:, :, 1:3], torch.tensor([[2, 5]], device="cuda"), *expected, "int8")
    run(k, v, torch.tensor([[-1, 2, 5, 8]], device="cuda"), *stores, "int8")
    assert differing_bytes(stores, expected) == [0] * 6


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_cuda_graph_replays_with_new_tokens_and_positions(fmt):
    """No host sync: the write captures into a CUDA graph, and each replay stores the K/V and positions now in the
    static buffers."""
    b, rows, h, d, cap = 4, 4, 8, 128, 256
    k, v, positions, stores = make_case(b, rows, h, 1, d, cap, fmt, torch.bfloat16)
    expected = [None if s is None else s.clone() for s in stores]
    run(k, v, positions, *[None if s is None else s.clone() for s in stores], fmt)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run(k, v, positions, *stores, fmt)
    for step in range(3):
        new_k, new_v, _, _ = make_case(b, rows, h, 1, d, cap, fmt, torch.bfloat16)
        k.copy_(new_k)
        v.copy_(new_v)
        positions.copy_(torch.tensor([[step], [10 + step], [100 + step], [cap - 1 - step]], device="cuda"))
        graph.replay()
        kv_cache_write(k, v, positions, *expected, fmt)
    torch.cuda.synchronize()
    assert differing_bytes(stores, expected) == [0] * 6


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_static_cache_writes_through_the_kernel(fmt):
    """StaticKVCache on a CUDA device takes the kernel from the registry; its prompt and decode writes store what
    the reference cache stores."""
    from accel.runtime.kv_cache import StaticKVCache
    from accel.runtime.quant_backend import KernelSelector

    kernels = KernelSelector("cuda")
    cache = StaticKVCache(2, 3, 8, 64, 128, kv_format=fmt, device="cuda", kernels=kernels)
    plain = StaticKVCache(2, 3, 8, 64, 128, kv_format=fmt, device="cuda")
    assert (cache.write_backend, plain.write_backend) == ("cuda", "reference")
    gen = generator()
    prompt_k, prompt_v = (torch.randn(2, 8, 20, 128, generator=gen, device="cuda").bfloat16() for _ in "kv")
    new_k, new_v = (torch.randn(2, 8, 1, 128, generator=gen, device="cuda").bfloat16() for _ in "kv")
    for target in (cache, plain):
        rows = target.rows(2)
        rows.write_prompt(1, prompt_k, prompt_v)
        rows.write(1, new_k, new_v, torch.tensor([[20], [7]], device="cuda"))
    for stored_a, stored_b in zip(cache.keys + cache.values, plain.keys + plain.values, strict=True):
        assert differing_bytes(list(stored_a), list(stored_b)) == [0] * 3


def test_compiled_step_with_the_kernel_matches_eager():
    """As Generator(compile=True) runs it: the kernel is opaque to dynamo (KernelSelector disables it), so the
    compiled step breaks the graph around the write and stores the same bytes."""
    from accel.runtime.kv_cache import StaticKVCache
    from accel.runtime.quant_backend import KernelSelector

    kernels = KernelSelector("cuda")
    caches = [StaticKVCache(1, 2, 8, 64, 128, kv_format="int4", device="cuda", kernels=kernels) for _ in range(2)]
    gen = generator()
    k, v = (torch.randn(2, 8, 1, 128, generator=gen, device="cuda").bfloat16() for _ in "kv")
    q = torch.randn(2, 32, 1, 128, generator=gen, device="cuda").bfloat16()
    positions, seq_lens = torch.tensor([[9], [0]], device="cuda"), torch.tensor([10, 1], device="cuda")
    outputs = []
    for cache, compiled in zip(caches, (False, True), strict=True):

        def step(k, v, positions, q, seq_lens, cache=cache):
            cache.write(0, k, v, positions)
            return cache.attend(0, q, seq_lens, 128**-0.5)

        outputs.append((torch.compile(step, backend="aot_eager") if compiled else step)(k, v, positions, q, seq_lens))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    for stored_a, stored_b in zip(caches[0].keys, caches[1].keys, strict=True):
        assert differing_bytes(list(stored_a), list(stored_b)) == [0] * 3


def test_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("kv_cache_write", "cuda").backend == "cuda"
    op = OPS["kv_cache_write"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            args = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            got = op.result(torch.ops.accel.kv_cache_write, args)
            expected = op.result(op.reference, args)
            assert torch.equal(got, expected), f"{args[-1]} T={args[0].shape[2]} {dtype}"
