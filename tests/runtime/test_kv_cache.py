"""StaticKVCache: writes land at each row's own positions in every format, memory is what the formats promise,
and on the bundled model a quantized cache really quantizes while staying close to the full-precision one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from accel.plugins import KernelBackendSpec, load_registry
from accel.plugins.backend import BackendPlugin
from accel.plugins.loader import PluginPolicy
from accel.runtime.kv_cache import StaticKVCache
from accel.runtime.kv_ops import KV_FORMATS, KVTensors, kv_cache_write, kv_dequantize, kv_quantize, kv_token_bytes
from accel.runtime.loaders import load_model
from accel.runtime.model import from_hf
from accel.runtime.quant_backend import KernelSelector
from accel.runtime.rope_kv_ops import rotary_kv_cache_write
from accel.runtime.rope_ops import rotary_embedding
from accel.schema import CapabilityDescriptor

LAYERS, HEADS, SEQ, DIM = 2, 3, 16, 64


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def stored(cache: StaticKVCache, layer: int, which: str = "k") -> torch.Tensor:
    """The cache's K or V of one layer, dequantized: [B, H, S, D] float32."""
    parts = (cache.keys if which == "k" else cache.values)[layer]
    return kv_dequantize(KVTensors(*parts), cache.kv_format)


@pytest.mark.parametrize("kv_format", KV_FORMATS)
def test_writes_land_at_each_rows_positions(kv_format: str) -> None:
    cache = StaticKVCache(LAYERS, 3, HEADS, SEQ, DIM, kv_format=kv_format, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    prompt_k, prompt_v = torch.randn(2, 3, HEADS, 5, DIM, generator=gen)
    rows = cache.rows(3)
    rows.write_prompt(1, prompt_k, prompt_v)
    new_k, new_v = torch.randn(2, 3, HEADS, 2, DIM, generator=gen)
    positions = torch.tensor([[5, 6], [2, 3], [9, 10]])  # ragged rows: each appends at its own length
    rows.write(1, new_k, new_v, positions)
    for which, prompt, new in (("k", prompt_k, new_k), ("v", prompt_v, new_v)):
        got = stored(cache, 1, which)
        expected = torch.zeros(3, HEADS, SEQ, DIM)
        expected[:, :, :5] = kv_dequantize(kv_quantize(prompt, kv_format), kv_format)
        for b in range(3):
            expected[b, :, positions[b]] = kv_dequantize(kv_quantize(new[b : b + 1], kv_format), kv_format)[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert stored(cache, 0).abs().sum() == 0  # other layers untouched


def test_rows_share_the_storage_and_check_the_batch() -> None:
    cache = StaticKVCache(LAYERS, 4, HEADS, SEQ, DIM, kv_format="int8", dtype=torch.bfloat16)
    rows = cache.rows(2)
    assert rows is cache.rows(2) and cache.rows(4) is cache
    rows.seq_lens.fill_(7)
    assert cache.seq_lens.tolist() == [7, 7, 0, 0]
    assert rows.keys[0].codes.data_ptr() == cache.keys[0].codes.data_ptr()
    cache.reset()
    assert cache.seq_lens.tolist() == [0, 0, 0, 0]
    with pytest.raises(ValueError, match="max_batch 4"):
        cache.rows(5)


@pytest.mark.parametrize("kv_format", KV_FORMATS)
def test_nbytes_is_the_formats_token_bytes(kv_format: str) -> None:
    cache = StaticKVCache(LAYERS, 2, HEADS, SEQ, DIM, kv_format=kv_format, dtype=torch.bfloat16)
    tokens = LAYERS * 2 * HEADS * SEQ * 2  # layers x rows x heads x positions x (K and V)
    assert cache.nbytes() == tokens * kv_token_bytes(kv_format, DIM, torch.bfloat16)


def test_int8_halves_a_bf16_cache() -> None:
    sizes = {fmt: StaticKVCache(LAYERS, 2, HEADS, SEQ, DIM, kv_format=fmt).nbytes() for fmt in KV_FORMATS}
    assert sizes["int8"] / sizes["none"] == pytest.approx((DIM + 4) / (2 * DIM))  # 0.53 at head_dim 64
    assert sizes["fp8"] == sizes["int8"]
    assert sizes["int4"] / sizes["none"] == pytest.approx((DIM / 2 + 4 * DIM / 32) / (2 * DIM))  # 0.31


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="kv_format must be one of .* got 'int3'"):
        StaticKVCache(LAYERS, 1, HEADS, SEQ, DIM, kv_format="int3")
    with pytest.raises(ValueError, match="max_seq must be at least 1"):
        StaticKVCache(LAYERS, 1, HEADS, 0, DIM)
    with pytest.raises(ValueError, match="head_dim divisible by 32"):
        StaticKVCache(LAYERS, 1, HEADS, SEQ, 48, kv_format="int4")


# ------------------------------------------------------------------------------------- the write op


def selector_with_write_kernel(calls: list[str]) -> KernelSelector:
    """A CPU kernel selector whose registry holds a backend serving kv_cache_write and rotary_kv_cache_write (core's
    references, recording each call's format, "rotary:"-prefixed for the fused one), registered as a third party's
    would be: the cache must take them from the selector."""

    def kernel(*args: object) -> None:
        calls.append(str(args[-1]))
        kv_cache_write(*args)  # type: ignore[arg-type]

    def rotary_kernel(*args: object) -> torch.Tensor:
        calls.append(f"rotary:{args[-1]}")
        return rotary_kv_cache_write(*args)  # type: ignore[arg-type]

    spec = KernelBackendSpec(
        name="cpu-kv-write",
        description="core's KV cache writes served as backend kernels on the CPU (test plugin)",
        device_type="cpu",
        is_available=lambda: True,
        capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"),
        kernels=lambda: {"kv_cache_write": kernel, "rotary_kv_cache_write": rotary_kernel},
        priority=1,
    )
    registry = load_registry(PluginPolicy())
    registry.manager.register(BackendPlugin(spec), name="cpu-kv-write")
    return KernelSelector("cpu", registry)


def same_stores(a: StaticKVCache, b: StaticKVCache) -> bool:
    """Every stored tensor of both caches equal byte for byte (None where the format has none)."""
    pairs = [
        (x, y)
        for stored_a, stored_b in zip(a.keys + a.values, b.keys + b.values, strict=True)
        for x, y in zip(stored_a, stored_b, strict=True)
    ]
    return all((x is None and y is None) or torch.equal(x.view(torch.uint8), y.view(torch.uint8)) for x, y in pairs)


@pytest.mark.parametrize("kv_format", KV_FORMATS)
def test_each_write_is_one_call_of_the_selected_kernel(kv_format: str) -> None:
    calls: list[str] = []
    cache = StaticKVCache(LAYERS, 3, HEADS, SEQ, DIM, kv_format=kv_format, kernels=selector_with_write_kernel(calls))
    plain = StaticKVCache(LAYERS, 3, HEADS, SEQ, DIM, kv_format=kv_format)
    assert (cache.write_backend, plain.write_backend) == ("cpu-kv-write", "reference")
    gen = torch.Generator().manual_seed(0)
    prompt_k, prompt_v = torch.randn(2, 2, HEADS, 5, DIM, generator=gen).to(torch.bfloat16)
    new_k, new_v = torch.randn(2, 2, HEADS, 1, DIM, generator=gen).to(torch.bfloat16)
    for target in (cache, plain):
        rows = target.rows(2)
        rows.write_prompt(1, prompt_k, prompt_v)
        rows.write(0, new_k, new_v, torch.tensor([[5], [3]]))
    assert calls == [kv_format, kv_format]  # K and V of a layer together, prompt and decode alike
    assert same_stores(cache, plain)


@pytest.mark.parametrize("kv_format", ["none", "int8", "int4"])
@pytest.mark.parametrize("backend_kernel", [False, True], ids=["reference", "backend"])
def test_a_compiled_decode_step_writes_what_the_eager_one_does(kv_format: str, backend_kernel: bool) -> None:
    """The write under torch.compile as Generator(compile=True) runs it: the reference traced into the graph
    (fullgraph), or a backend's kernel, which KernelSelector makes opaque to dynamo (a graph break)."""
    kernels = selector_with_write_kernel([]) if backend_kernel else None
    caches = [StaticKVCache(1, 2, 2, SEQ, DIM, kv_format=kv_format, kernels=kernels) for _ in range(2)]
    gen = torch.Generator().manual_seed(1)
    k, v = torch.randn(2, 2, 2, 1, DIM, generator=gen).to(torch.bfloat16)
    q = torch.randn(2, 4, 1, DIM, generator=gen).to(torch.bfloat16)
    positions, seq_lens = torch.tensor([[3], [0]]), torch.tensor([4, 1])
    outputs = []
    for cache, compiled in zip(caches, (False, True), strict=True):

        def step(k, v, positions, q, seq_lens, cache=cache):
            cache.write(0, k, v, positions)
            return cache.attend(0, q, seq_lens, DIM**-0.5)

        run = torch.compile(step, backend="aot_eager", fullgraph=not backend_kernel) if compiled else step
        outputs.append(run(k, v, positions, q, seq_lens))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert same_stores(caches[0], caches[1])
    assert stored(caches[1], 0)[0, :, 3].abs().sum() > 0  # the compiled step really wrote


def decode_qkv(b: int, heads: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One decode token's q [B, 1, heads, D], k and v [B, 1, HEADS, D] (views of one qkv output, as the model makes
    them) and cos / sin [B, 1, D] of random values, bf16."""
    qkv = torch.randn(b, 1, (heads + 2 * HEADS) * DIM, generator=gen).to(torch.bfloat16)
    q, k, v = qkv.split((heads * DIM, HEADS * DIM, HEADS * DIM), dim=-1)
    cos, sin = torch.randn(2, b, 1, DIM, generator=gen).to(torch.bfloat16)
    return q.view(b, 1, heads, DIM), k.view(b, 1, HEADS, DIM), v.view(b, 1, HEADS, DIM), cos, sin


@pytest.mark.parametrize("kv_format", KV_FORMATS)
def test_write_rotary_is_one_call_of_the_selected_kernel_and_rope_then_write(kv_format: str) -> None:
    """write_rotary: q rotated back, rotated k and v stored, in one call of the selector's rotary_kv_cache_write; the
    same q and bytes as rotary_embedding then `write` (the unfused decode step)."""
    calls: list[str] = []
    cache = StaticKVCache(LAYERS, 3, HEADS, SEQ, DIM, kv_format=kv_format, kernels=selector_with_write_kernel(calls))
    plain = StaticKVCache(LAYERS, 3, HEADS, SEQ, DIM, kv_format=kv_format)
    assert (cache.rotary_write_backend, plain.rotary_write_backend) == ("cpu-kv-write", "reference")
    q, k, v, cos, sin = decode_qkv(2, 6, torch.Generator().manual_seed(0))
    positions = torch.tensor([[5], [3]])
    got = cache.rows(2).write_rotary(1, q, k, v, cos, sin, positions)
    want, k_rot = rotary_embedding(q, k, cos, sin)
    plain.rows(2).write(1, k_rot.transpose(1, 2), v.transpose(1, 2), positions)
    assert calls == [f"rotary:{kv_format}"]
    assert torch.equal(got, want) and same_stores(cache, plain)
    assert stored(cache, 1)[:, :, 5].abs().sum() > 0 and stored(cache, 0).abs().sum() == 0


@pytest.mark.parametrize("kv_format", ["none", "int8", "int4"])
@pytest.mark.parametrize("backend_kernel", [False, True], ids=["reference", "backend"])
def test_a_compiled_rotary_write_stores_what_the_eager_one_does(kv_format: str, backend_kernel: bool) -> None:
    """write_rotary under torch.compile as a decode step runs it: the reference traced (fullgraph), or a backend's
    kernel made opaque to dynamo; the same q, attention output and stores as eagerly."""
    kernels = selector_with_write_kernel([]) if backend_kernel else None
    caches = [StaticKVCache(1, 2, HEADS, SEQ, DIM, kv_format=kv_format, kernels=kernels) for _ in range(2)]
    q, k, v, cos, sin = decode_qkv(2, 6, torch.Generator().manual_seed(1))
    positions, seq_lens = torch.tensor([[3], [0]]), torch.tensor([4, 1])
    outputs = []
    for cache, compiled in zip(caches, (False, True), strict=True):

        def step(q, k, v, cos, sin, positions, seq_lens, cache=cache):
            q_rot = cache.write_rotary(0, q, k, v, cos, sin, positions).transpose(1, 2)
            return cache.attend(0, q_rot, seq_lens, DIM**-0.5)

        run = torch.compile(step, backend="aot_eager", fullgraph=not backend_kernel) if compiled else step
        outputs.append(run(q, k, v, cos, sin, positions, seq_lens))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert same_stores(caches[0], caches[1])
    assert stored(caches[1], 0)[0, :, 3].abs().sum() > 0  # the compiled step really wrote


# ------------------------------------------------------------------------------------- bundled model


@pytest.fixture(scope="module")
def runtime_and_ids():
    hf, tokenizer = load_model(dtype=torch.float32)
    return from_hf(hf), tokenizer("The capital of France is a city that").input_ids


def decode_logits(runtime, ids: list[int], kv_format: str, steps: list[int]) -> torch.Tensor:
    """Logits of `steps` decoded one at a time after the prompt, through a cache in `kv_format`."""
    cache = runtime.new_cache(1, len(ids) + len(steps), kv_format)
    with torch.no_grad():
        runtime.prefill(torch.tensor([ids]), torch.tensor([len(ids)]), cache)
        return torch.cat([runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps])


@pytest.mark.slow
def test_quantized_caches_stay_close_to_full_precision(runtime_and_ids) -> None:
    runtime, ids = runtime_and_ids
    steps = [553, 719, 253, 37257]
    reference = decode_logits(runtime, ids, "none", steps)
    # Measured relative errors on this prompt: int8 ~0.007, fp8 ~0.02, int4 ~0.06.
    bounds = {"int8": 0.02, "fp8": 0.05, "int4": 0.15}
    for kv_format, bound in bounds.items():
        got = decode_logits(runtime, ids, kv_format, steps)
        error = float((got - reference).norm() / reference.norm())
        assert 0 < error < bound, (kv_format, error)  # it really quantizes, and stays close
        assert torch.equal(got.argmax(-1), reference.argmax(-1)) or kv_format == "int4"
