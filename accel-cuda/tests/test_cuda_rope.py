"""The fused RoPE on a real GPU: bit for bit the reference computed on the same device (each product and the sum
rounded to the dtype as torch rounds them) for bf16 / fp16 / fp32, at Llama-3-8B's decode and prefill shapes and odd
ones, on strided q / k views, under CUDA-graph replay, and through the registry and the custom op."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.ops import OPS
from accel.runtime.rope_ops import rotary_embedding

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128  # Llama-3-8B
_seed = iter(range(1_000_000))


def kernel(*args, **kwargs):
    from accel_cuda.kernels.rope import rotary_embedding as impl

    return impl(*args, **kwargs)


def no_fallback(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
    raise AssertionError("the Triton kernel fell back to the reference")


def fused_qkv(b, t, h, hkv, d, dtype):
    """q [B, T, H, D] and k [B, T, Hkv, D] as the model makes them: strided views of one qkv projection output."""
    gen = torch.Generator(device="cuda").manual_seed(7000 + next(_seed))
    qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen, device="cuda") * 3).to(dtype)
    q, k, _ = qkv.split((h * d, hkv * d, hkv * d), dim=-1)
    return q.view(b, t, h, d), k.view(b, t, hkv, d)


def tables(table_batch, t, d, dtype, max_position=8192):
    """cos / sin [table_batch, T, D] of RoPE angles (theta 5e5, each frequency in both halves): positions 0 .. T - 1
    for a table of batch 1 (a prefill), else T positions from a random start per row (a decode step)."""
    gen = torch.Generator(device="cuda").manual_seed(8000 + next(_seed))
    start = torch.randint(0, max_position - t, (table_batch, 1), generator=gen, device="cuda") if table_batch > 1 else 0
    positions = start + torch.arange(t, device="cuda")[None]
    half = positions[..., None].float() * 500000.0 ** -(torch.arange(0, d, 2, device="cuda").float() / d)
    angle = torch.cat((half, half), dim=-1)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def assert_bit_exact(got, want):
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape and g.is_contiguous()
        assert torch.equal(g, w), f"{int((g != w).sum())} of {g.numel()} elements differ"


CASES = [  # (B, T, H, Hkv, D, table batch)
    (1, 1, HEADS, KV_HEADS, HEAD_DIM, 1),  # Llama-3-8B decode, batch 1
    (16, 1, HEADS, KV_HEADS, HEAD_DIM, 16),
    (64, 1, HEADS, KV_HEADS, HEAD_DIM, 64),  # decode, batch 64: a table per row
    (1, 2048, HEADS, KV_HEADS, HEAD_DIM, 1),  # a 2k prefill, one [1, T, D] table
    (4, 33, HEADS, KV_HEADS, HEAD_DIM, 1),  # a batched prefill
    (3, 1, 5, 1, 64, 3),  # odd head counts, SmolLM2's head_dim
    (2, 7, 9, 3, 64, 1),
    (2, 3, 6, 2, 96, 2),  # head_dim off the powers of two (masked half)
    (2, 5, 4, 4, 256, 2),  # the largest head_dim
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_bit_exact_with_the_reference_on_the_same_device(dtype, case, monkeypatch):
    from accel_cuda.kernels import rope

    b, t, h, hkv, d, table_batch = case
    q, k = fused_qkv(b, t, h, hkv, d, dtype)
    cos, sin = tables(table_batch, t, d, dtype)
    monkeypatch.setattr(rope, "reference", no_fallback)
    got = kernel(q, k, cos, sin)
    monkeypatch.undo()
    assert_bit_exact(got, rotary_embedding(q, k, cos, sin))


@pytest.mark.parametrize("dtype", DTYPES)
def test_random_tables_and_layouts_it_takes(dtype, monkeypatch):
    """Independent random cos / sin values (a kernel mixing up the tables' halves shows), q / k in [B, H, T, D] memory
    viewed [B, T, H, D], tables expanded over the batch (stride 0) or of batch 1 for cos and B for sin."""
    from accel_cuda.kernels import rope

    gen = torch.Generator(device="cuda").manual_seed(11)
    b, t, h, hkv, d = 3, 4, 8, 2, 128
    q = torch.randn(b, h, t, d, generator=gen, device="cuda").to(dtype).transpose(1, 2)
    k = torch.randn(b, hkv, t, d, generator=gen, device="cuda").to(dtype).transpose(1, 2)
    cos, sin = (torch.randn(b, t, d, generator=gen, device="cuda").to(dtype) for _ in range(2))
    monkeypatch.setattr(rope, "reference", no_fallback)
    for tables_ in ((cos, sin), (cos[:1].expand(b, t, d), sin[:1].expand(b, t, d)), (cos[:1], sin)):
        assert_bit_exact(kernel(q, k, *tables_), rotary_embedding(q, k, *tables_))


def test_layouts_it_leaves_to_the_reference():
    from accel_cuda.kernels import rope

    q, k = fused_qkv(2, 3, 4, 2, 16, torch.float32)
    cos, sin = tables(1, 3, 16, torch.float32)
    wide_q, wide_k = fused_qkv(1, 2, 2, 1, rope.MAX_HEAD_DIM + 2, torch.bfloat16)
    wide = tables(1, 2, rope.MAX_HEAD_DIM + 2, torch.bfloat16)
    left = [
        (q, k, torch.randn(1, 16, 3, device="cuda").transpose(1, 2), sin),  # a table's last dimension strided
        (q.double(), k.double(), cos.double(), sin.double()),
        (wide_q, wide_k, *wide),
        (q[:0], k[:0], cos, sin),
    ]
    for args in left:
        assert_bit_exact(kernel(*args), rotary_embedding(*args))


def test_cuda_graph_replays_with_new_tokens():
    """No host sync: the kernel captures into a CUDA graph and each replay rotates what is now in q, k and the
    tables (a decode step's positions change every step)."""
    q, k = fused_qkv(16, 1, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16)
    cos, sin = tables(16, 1, HEAD_DIM, torch.bfloat16)
    kernel(q, k, cos, sin)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = kernel(q, k, cos, sin)
    for _ in range(3):
        fresh_q, fresh_k = fused_qkv(16, 1, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16)
        fresh_cos, fresh_sin = tables(16, 1, HEAD_DIM, torch.bfloat16)
        for dst, src in ((q, fresh_q), (k, fresh_k), (cos, fresh_cos), (sin, fresh_sin)):
            dst.copy_(src)
        graph.replay()
        assert_bit_exact(out, rotary_embedding(q, k, cos, sin))


def test_one_compile_for_every_batch_size_and_length():
    """Token counts are not specialized: decode at batch 1 .. 64 and prefills of any length reuse one compile (counted
    in Triton's per-device kernel caches)."""
    from accel_cuda.kernels import rope

    def compiles() -> int:
        return sum(len(caches[0]) for caches in rope._rope_kernel.device_caches.values())

    q, k = fused_qkv(1, 1, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16)
    kernel(q, k, *tables(1, 1, HEAD_DIM, torch.bfloat16))
    before = compiles()
    for b, t in ((2, 1), (17, 1), (64, 1), (1, 7), (3, 129)):
        q, k = fused_qkv(b, t, HEADS, KV_HEADS, HEAD_DIM, torch.bfloat16)
        kernel(q, k, *tables(b if t == 1 else 1, t, HEAD_DIM, torch.bfloat16))
    assert compiles() == before


def test_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("rotary_embedding", "cuda").backend == "cuda"
    op = OPS["rotary_embedding"]
    for case, make_inputs in enumerate(op.input_makers):
        for dtype in DTYPES:
            args = make_inputs(torch.Generator().manual_seed(case), "cuda", dtype)
            assert_bit_exact(torch.ops.accel.rotary_embedding(*args), op.reference(*args))
