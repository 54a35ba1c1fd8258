"""RoPE fused with the KV cache write (rope_kv_write.py): under Triton's interpreter (TRITON_INTERPRET=1, CPU tensors)
and on a real GPU (gpu marker).

Interpreter: q's rotation and every byte of the stores as the reference makes them (fp32, fp16), or as it makes them
from the interpreter's truncated bf16 rotation (bf16: rope.py's caveat); every format, odd head counts, partial head
blocks, T > 1, batch > 1, positions out of order, poisoned stores and outputs, out-of-range positions skipped; the
reference for layouts the kernel does not take. GPU: bit for bit the reference on the same device, under CUDA-graph
replay, and wherever the runtime reaches it (the registry, the custom op, StaticKVCache, a model's decode step)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from accel_cuda.kernels import triton_available

from accel.runtime.kv_ops import KV_FORMATS, kv_quantize
from accel.runtime.ops import OPS
from accel.runtime.rope_kv_ops import rotary_kv_cache_write

needs_triton = pytest.mark.skipif(not triton_available(), reason="needs Triton (its interpreter)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

INTERPRETER_SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize
    from accel.runtime.rope_kv_ops import rotary_kv_cache_write
    from accel_cuda.kernels import rope, rope_kv_write as kernel

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    kernel.reference, rope.POISON = no_fallback, True
    gen = torch.Generator().manual_seed(0)

    def trunc(v):
        # float32 -> bf16 as the interpreter casts: truncated to the upper 16 bits (a GPU rounds to nearest even).
        return (v.view(torch.int32) & -65536).view(torch.float32)

    def rotated_bf16(x, cos, sin):
        # The kernel's bf16 rotation under the interpreter: each product, then the sum, truncated to bf16.
        x, cos, sin = x.float(), cos.float().unsqueeze(2), sin.float().unsqueeze(2)
        x1, x2 = x.chunk(2, dim=-1)
        return trunc(trunc(x * cos) + trunc(torch.cat((-x2, x1), dim=-1) * sin)).to(torch.bfloat16)

    def inputs(b, t, h, hkv, d, dtype, transposed, table_batch):
        # q / k / v as the model makes them (views of one qkv output; or [B, H, T, D] memory viewed [B, T, H, D]), the
        # first token's k and v all zeros (kv_quantize's floor scale; k's -0.0, whose rotation keeps torch's signs of
        # zero); random tables of batch table_batch.
        if transposed:
            q, k, v = (torch.randn(b, n, t, d, generator=gen).mul(3).to(dtype).transpose(1, 2) for n in (h, hkv, hkv))
        else:
            qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen) * 3).to(dtype)
            q, k, v = (x.view(b, t, -1, d) for x in qkv.split((h * d, hkv * d, hkv * d), dim=-1))
        k[0, 0] = -0.0
        v[0, 0] = 0.0
        cos, sin = (torch.randn(table_batch, t, d, generator=gen).to(dtype) for _ in range(2))
        return q, k, v, cos, sin

    def poisoned(rows, h, cap, d, fmt, dtype):
        # Stores of random bytes (NaN, inf, signalling NaN among them): whatever the write must leave shows.
        stores = []
        for _ in range(2):
            for part in kv_quantize(torch.zeros(1, 1, 1, d, dtype=dtype), fmt):
                if part is None:
                    stores.append(None)
                    continue
                raw = torch.randint(0, 256, (rows, h, cap, part.shape[-1] * part.element_size()), generator=gen)
                stores.append(raw.to(torch.uint8).view(part.dtype))
        return stores

    def same_bytes(a, b):
        return all(x is None and y is None or torch.equal(x.view(torch.uint8), y.view(torch.uint8))
                   for x, y in zip(a, b))

    def expected(q, k, v, cos, sin, positions, stores, fmt):
        # The reference's q and stores; in bf16 the kernel's (interpreter-truncated) rotation, then the reference's
        # write of that k, which the kernel must store bit for bit.
        stores = [None if s is None else s.clone() for s in stores]
        if q.dtype != torch.bfloat16:
            return rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt), stores
        k_rot = rotated_bf16(k, cos, sin)
        kv_cache_write(k_rot.transpose(1, 2), v.transpose(1, 2), positions, *stores, fmt)
        return rotated_bf16(q, cos, sin), stores

    cases = 0
    # (b, rows, t, h, hkv, d, cap, table batch, config): Llama-3-8B decode at batch 1 (the plan: 8 q heads a program,
    # 1 k / v head, or 8 for "none"); odd head counts (5 over 1) with head_dim 96 (3 int4 groups, a masked half) and a
    # row past B; a T = 3 verification with one table for the batch and partial q and k / v head blocks; MHA (6 over 6)
    # in blocks of 4; the largest head_dim; a 9-token chunk at batch 3.
    shapes = [(1, 1, 1, 32, 8, 128, 64, 1, None), (3, 4, 1, 5, 1, 96, 40, 3, None),
              (2, 3, 3, 9, 3, 64, 11, 1, kernel.RopeKVConfig(2, 2, 1)),
              (2, 2, 2, 6, 6, 32, 9, 2, kernel.RopeKVConfig(4, 4, 2)),
              (2, 2, 2, 4, 2, 256, 7, 2, None), (3, 3, 9, 4, 2, 64, 12, 3, None)]
    for fmt in KV_FORMATS:
        for b, rows, t, h, hkv, d, cap, table_batch, config in shapes:
            if fmt == "int4" and d % 32:
                continue
            for dtype in (torch.float32, torch.float16, torch.bfloat16):
                q, k, v, cos, sin = inputs(b, t, h, hkv, d, dtype, cases % 2 == 1, table_batch)
                positions = torch.stack([torch.randperm(cap, generator=gen)[:t] for _ in range(b)])  # any order
                positions = positions.to(torch.int32 if cases % 3 == 0 else torch.int64)
                stores = poisoned(rows, hkv, cap, d, fmt, dtype)
                want_q, want_stores = expected(q, k, v, cos, sin, positions, stores, fmt)
                got_q = kernel.rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt, config=config)
                where = (fmt, b, t, h, hkv, d, str(dtype))
                assert got_q.dtype == dtype and got_q.shape == q.shape and got_q.is_contiguous(), where
                assert torch.equal(got_q, want_q), where
                assert same_bytes(stores, want_stores), where
                cases += 1
    # Positions outside [0, S) are skipped: the other tokens land as the reference stores them.
    q, k, v, cos, sin = inputs(1, 4, 3, 2, 64, torch.float32, False, 1)
    stores = poisoned(1, 2, 8, 64, "int8", torch.float32)
    _, want_stores = expected(q[:, 1:3], k[:, 1:3], v[:, 1:3], cos[:, 1:3], sin[:, 1:3], torch.tensor([[2, 5]]),
                              stores, "int8")
    kernel.rotary_kv_cache_write(q, k, v, cos, sin, torch.tensor([[-1, 2, 5, 8]]), *stores, "int8")
    assert same_bytes(stores, want_stores), "out-of-range positions"
    cases += 1
    # Layouts it does not take run the reference, exactly: a strided last dimension, float64, head_dim past rope's
    # maximum, "none" with a cast to the stores' dtype, no tokens.
    kernel.reference = rotary_kv_cache_write
    q, k, v, cos, sin = inputs(2, 3, 4, 2, 32, torch.float32, False, 1)
    positions = torch.tensor([[0, 1, 2], [5, 4, 3]])
    wide = inputs(1, 1, 2, 1, rope.MAX_HEAD_DIM + 32, torch.float32, False, 1)
    odd = [((q, k, v, torch.randn(1, 32, 3, generator=gen).transpose(1, 2), sin, positions), "int8", torch.float32),
           ((q.double(), k.double(), v.double(), cos.double(), sin.double(), positions), "int4", torch.float32),
           ((*wide, torch.tensor([[3]])), "int8", torch.float32),
           ((q, k, v, cos, sin, positions), "none", torch.bfloat16),
           ((q[:, :0], k[:, :0], v[:, :0], cos[:, :0], sin[:, :0], positions[:, :0]), "int8", torch.float32)]
    for args, fmt, dtype in odd:
        stores = poisoned(2, args[1].shape[2], 8, args[1].shape[3], fmt, dtype)
        want_q, want_stores = expected(*args, stores, fmt)
        assert torch.equal(kernel.rotary_kv_cache_write(*args, *stores, fmt), want_q), fmt
        assert same_bytes(stores, want_stores), fmt
        cases += 1
    print("cases", cases)
    """
)


@needs_triton
def test_under_the_interpreter_is_exact():
    """Every format x fp32 / fp16 / bf16 x six shapes, out-of-range positions, five layouts left to the reference:
    q and every store byte exact (module docstring)."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", INTERPRETER_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 78\n" in done.stdout, done.stdout


# ------------------------------------------------------------------------------------------------------ on a GPU

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B
_seed = iter(range(1_000_000))


def generator() -> torch.Generator:
    return torch.Generator(device="cuda").manual_seed(9000 + next(_seed))


def kernel(*args, **kwargs) -> torch.Tensor:
    from accel_cuda.kernels.rope_kv_write import rotary_kv_cache_write as impl

    return impl(*args, **kwargs)


def no_fallback(*args: object) -> torch.Tensor:
    raise AssertionError("the Triton kernel fell back to the reference")


def poisoned(rows, hkv, cap, d, fmt, dtype, gen) -> list[torch.Tensor | None]:
    """[k_codes, k_scale, k_zero, v_codes, v_scale, v_zero] of random bytes (NaN, inf, signalling NaN among them)."""
    stores: list[torch.Tensor | None] = []
    for _ in range(2):
        for part in kv_quantize(torch.zeros(1, 1, 1, d, dtype=dtype, device="cuda"), fmt):
            if part is None:
                stores.append(None)
                continue
            shape = (rows, hkv, cap, part.shape[-1] * part.element_size())
            raw = torch.randint(0, 256, shape, generator=gen, device="cuda", dtype=torch.int32)
            stores.append(raw.to(torch.uint8).view(part.dtype))
    return stores


def make_case(b, rows, t, h, hkv, d, cap, fmt, dtype, table_batch=None):
    """q / k / v as views of one fused qkv output, RoPE tables of real angles ([B, T, D] at each row's positions, or one
    [1, T, D] table), distinct random positions per row, poisoned stores of `rows` >= B rows."""
    gen = generator()
    qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen, device="cuda") * 3).to(dtype)
    q, k, v = (x.view(b, t, -1, d) for x in qkv.split((h * d, hkv * d, hkv * d), dim=-1))
    positions = torch.stack([torch.randperm(cap, generator=gen, device="cuda")[:t] for _ in range(b)])
    at = positions[:1] if table_batch == 1 else positions
    half = at[..., None].float() * 500000.0 ** -(torch.arange(0, d, 2, device="cuda").float() / d)
    angle = torch.cat((half, half), dim=-1)
    return (
        q,
        k,
        v,
        angle.cos().to(dtype),
        angle.sin().to(dtype),
        positions,
        poisoned(rows, hkv, cap, d, fmt, dtype, gen),
    )


def differing_bytes(got, want) -> list[int]:
    """Per store, how many bytes differ (0 everywhere: exact)."""
    return [
        0 if g is None else int((g.view(torch.uint8) != w.view(torch.uint8)).sum())
        for g, w in zip(got, want, strict=True)
    ]


def check_exact(q, k, v, cos, sin, positions, stores, fmt, **kwargs) -> None:
    """The kernel's q and stores against the reference's, both on this GPU, from the same poisoned start."""
    expected = [None if s is None else s.clone() for s in stores]
    want = rotary_kv_cache_write(q, k, v, cos, sin, positions, *expected, fmt)
    got = kernel(q, k, v, cos, sin, positions, *stores, fmt, **kwargs)
    torch.cuda.synchronize()
    assert got.dtype == want.dtype and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want), f"{fmt}: {int((got != want).sum())} of {got.numel()} q elements differ"
    diff = differing_bytes(stores, expected)
    assert diff == [0] * 6, f"{fmt}: bytes differing per store (k codes, scale, zero, v codes, scale, zero): {diff}"


CASES = [  # (B, rows, T, H, Hkv, D, S, table batch)
    (1, 1, 1, HEADS, KV_HEADS, HEAD_DIM, 4096, None),  # Llama-3-8B decode, batch 1
    (16, 32, 1, HEADS, KV_HEADS, HEAD_DIM, 2048, None),  # decode into the first 16 rows of a 32-row cache
    (64, 64, 1, HEADS, KV_HEADS, HEAD_DIM, 1024, None),
    (4, 4, 5, HEADS, KV_HEADS, HEAD_DIM, 512, None),  # speculative verification, T = 5
    (1, 1, 300, HEADS, KV_HEADS, HEAD_DIM, 512, 1),  # a prefill chunk with one table
    (3, 4, 2, 5, 1, 96, 40, None),  # odd head counts, head_dim 96
    (2, 3, 3, 9, 3, 64, 100, 1),  # SmolLM2's heads and head_dim
    (2, 2, 2, 4, 4, 256, 16, None),  # the largest head_dim
]


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.gpu
@needs_cuda
def test_bit_exact_with_the_reference_on_the_same_device(fmt, dtype, case, monkeypatch):
    from accel_cuda.kernels import rope_kv_write

    b, rows, t, h, hkv, d, cap, table_batch = case
    if fmt == "int4" and d % 32:
        pytest.skip("int4 needs head_dim divisible by 32")
    monkeypatch.setattr(rope_kv_write, "reference", no_fallback)
    args = make_case(b, rows, t, h, hkv, d, cap, fmt, dtype, table_batch)
    check_exact(*args[:6], args[6], fmt)


@pytest.mark.gpu
@needs_cuda
def test_out_of_range_positions_are_skipped():
    q, k, v, cos, sin, _, stores = make_case(1, 1, 4, 4, 2, 64, 8, "int8", torch.bfloat16)
    expected = [None if s is None else s.clone() for s in stores]
    middle = (x[:, 1:3] for x in (q, k, v, cos, sin))
    rotary_kv_cache_write(*middle, torch.tensor([[2, 5]], device="cuda"), *expected, "int8")
    kernel(q, k, v, cos, sin, torch.tensor([[-1, 2, 5, 8]], device="cuda"), *stores, "int8")
    assert differing_bytes(stores, expected) == [0] * 6


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.gpu
@needs_cuda
def test_cuda_graph_replays_with_new_tokens_and_positions(fmt):
    """No host sync: the fused op captures into a CUDA graph, and each replay rotates the q / k now in the static
    buffers and stores k / v at the positions now there (a decode step's change every step)."""
    b, rows, d, cap = 4, 4, HEAD_DIM, 256
    q, k, v, cos, sin, positions, stores = make_case(b, rows, 1, HEADS, KV_HEADS, d, cap, fmt, torch.bfloat16)
    expected = [None if s is None else s.clone() for s in stores]
    kernel(q, k, v, cos, sin, positions, *[None if s is None else s.clone() for s in stores], fmt)  # compile first
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(q, k, v, cos, sin, positions, *stores, fmt)
    for step in range(3):
        fresh = make_case(b, rows, 1, HEADS, KV_HEADS, d, cap, fmt, torch.bfloat16)
        for dst, src in zip((q, k, v, cos, sin), fresh[:5], strict=True):
            dst.copy_(src)
        positions.copy_(torch.tensor([[step], [10 + step], [100 + step], [cap - 1 - step]], device="cuda"))
        graph.replay()
        want = rotary_kv_cache_write(q, k, v, cos, sin, positions, *expected, fmt)
        torch.cuda.synchronize()
        assert torch.equal(out, want)
    assert differing_bytes(stores, expected) == [0] * 6


@pytest.mark.gpu
@needs_cuda
def test_registry_custom_op_and_static_cache_run_the_kernel():
    """The CUDA backend serves the op (registry, torch.ops.accel on every conformance input), and StaticKVCache on a
    CUDA device writes through it: the same q and bytes as a cache of reference kernels."""
    import accel.runtime.custom_ops  # noqa: F401  (registers torch.ops.accel)
    from accel.runtime.custom_ops import kernel_choice
    from accel.runtime.kv_cache import StaticKVCache
    from accel.runtime.quant_backend import KernelSelector

    assert kernel_choice("rotary_kv_cache_write", "cuda").backend == "cuda"
    op = OPS["rotary_kv_cache_write"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            args = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            got = op.result(torch.ops.accel.rotary_kv_cache_write, args)
            assert torch.equal(got, op.result(op.reference, args)), f"{args[-1]} T={args[0].shape[1]} {dtype}"
    for fmt in KV_FORMATS:
        cache = StaticKVCache(
            2, 3, KV_HEADS, 64, HEAD_DIM, kv_format=fmt, device="cuda", kernels=KernelSelector("cuda")
        )
        plain = StaticKVCache(2, 3, KV_HEADS, 64, HEAD_DIM, kv_format=fmt, device="cuda")
        assert (cache.rotary_write_backend, plain.rotary_write_backend) == ("cuda", "reference")
        q, k, v, cos, sin, positions, _ = make_case(2, 2, 1, HEADS, KV_HEADS, HEAD_DIM, 64, fmt, torch.bfloat16)
        got, want = (target.rows(2).write_rotary(1, q, k, v, cos, sin, positions) for target in (cache, plain))
        assert torch.equal(got, want)
        for stored_a, stored_b in zip(cache.keys + cache.values, plain.keys + plain.values, strict=True):
            assert differing_bytes(list(stored_a), list(stored_b)) == [0] * 3


@pytest.mark.parametrize("kv_format", ["none", "int8", "int4"])
@pytest.mark.gpu
@needs_cuda
def test_model_decode_through_the_kernel_matches_the_unfused_kernels(kv_format, monkeypatch):
    """A random Llama on the GPU: decode through the fused kernel (one launch a layer) gives the logits and cache
    bytes of decode through rotary_embedding's and kv_cache_write's own kernels, bit for bit."""
    from transformers import LlamaConfig

    from accel.runtime.kv_cache import StaticKVCache
    from accel.runtime.model import random_model

    config = LlamaConfig(
        vocab_size=512,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    model = random_model(config, dtype=torch.bfloat16, device="cuda", kv_format=kv_format)
    assert model.kernel_meta()["rotary_kv_cache_write"] == "cuda"
    tokens, lengths = (
        torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 0]], device="cuda"),
        torch.tensor([5, 4], device="cuda"),
    )

    def run() -> tuple[list[torch.Tensor], StaticKVCache]:
        cache = model.new_cache(2, 16)
        with torch.no_grad():
            model.prefill(tokens, lengths, cache)
            steps = (torch.tensor([[6], [9]], device="cuda"), torch.tensor([[2, 6], [5, 3]], device="cuda"))
            return [model.decode(step, cache) for step in steps], cache

    got, fused_cache = run()
    rope_op = model.layers[0].self_attn.rope

    def unfused(self, layer, q, k, v, cos, sin, positions):  # type: ignore[no-untyped-def]
        q_rot, k_rot = rope_op(q, k, cos, sin)  # the rotary_embedding kernel
        self.write(layer, k_rot.transpose(1, 2), v.transpose(1, 2), positions)  # the kv_cache_write kernel
        return q_rot

    assert rope_op.backend == "cuda"
    monkeypatch.setattr(StaticKVCache, "write_rotary", unfused)
    expected, plain_cache = run()
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    fused_stores, plain_stores = (cache.keys + cache.values for cache in (fused_cache, plain_cache))
    for stored_a, stored_b in zip(fused_stores, plain_stores, strict=True):
        assert differing_bytes(list(stored_a), list(stored_b)) == [0] * 3
