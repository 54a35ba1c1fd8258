"""Flash-decoding over the static KV cache on a real GPU against float64, fresh random inputs for every case."""

from __future__ import annotations

import math

import pytest
import torch

from accel.runtime.kv_ops import KV_FORMATS, KVTensors, kv_dequantize, kv_quantize
from accel.runtime.ops import OPS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

# ||got - ref|| / ||ref|| against float64 on the same stored (quantized) cache. bf16: the output rounding (2^-9)
# plus p rounded to bf16 before the PV product (and int4's K/V rounded to bf16 once); fp16 the same at 2^-12;
# fp32 dots run in IEEE fp32.
BOUND = {torch.bfloat16: 1e-2, torch.float16: 3e-3, torch.float32: 1e-5}

_seed = iter(range(1_000_000))


def make_case(b, hq, hkv, t, d, cap, lens, fmt, dtype):
    gen = torch.Generator(device="cuda").manual_seed(5000 + next(_seed))
    q = torch.randn(b, hq, t, d, generator=gen, device="cuda").to(dtype)
    keys, values = (torch.randn(b, hkv, cap, d, generator=gen, device="cuda") * 2 for _ in range(2))
    if fmt == "none":
        keys, values = keys.to(dtype), values.to(dtype)
    k, v = kv_quantize(keys, fmt), kv_quantize(values, fmt)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    return (q, *k, *v, seq_lens, fmt, 1.0 / math.sqrt(d))


def float64_reference(q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, seq_lens, fmt, sm_scale):
    """Direct definition, one (row, query head) at a time: softmax over the positions each query sees."""
    keys = kv_dequantize(KVTensors(k_codes, k_scale, k_zero), fmt).double()
    values = kv_dequantize(KVTensors(v_codes, v_scale, v_zero), fmt).double()
    b, hq, t, _ = q.shape
    group = hq // keys.shape[1]
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    for row in range(b):
        length = int(seq_lens[row])
        for head in range(hq):
            k, v = keys[row, head // group, :length], values[row, head // group, :length]
            scores = q[row, head].double() @ k.T * sm_scale  # [T, length]
            positions = torch.arange(length, device=q.device)
            visible = positions[None, :] <= (length - t + torch.arange(t, device=q.device))[:, None]
            scores = scores.masked_fill(~visible, float("-inf"))
            out[row, head] = torch.softmax(scores, dim=-1) @ v
    return out


def relative_error(got, expected):
    assert torch.isfinite(got).all(), "non-finite output (an element left unwritten?)"
    return float((got.double() - expected).norm() / expected.norm())


def run(args, **kwargs):
    from accel_cuda.kernels.attention import cached_attention

    return cached_attention(*args, **kwargs)


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize(("hq", "hkv"), [(8, 8), (32, 8), (16, 2)], ids=["mha", "gqa4", "gqa8"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_decode_matches_float64(fmt, hq, hkv, dtype):
    # Ragged rows: one token, one past a block boundary, one full cache of a capacity no block size divides.
    args = make_case(3, hq, hkv, 1, 128, 1000, [1, 129, 1000], fmt, dtype)
    got = run(args)
    assert got.shape == args[0].shape and got.dtype == dtype
    error = relative_error(got, float64_reference(*args))
    assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize(
    ("b", "hq", "hkv", "t", "d", "cap", "lens"),
    [
        (2, 4, 1, 1, 64, 77, [77, 5]),  # small head_dim, one KV head
        (1, 12, 4, 1, 96, 300, [299]),  # head_dim not a power of two (three int4 groups)
        (2, 8, 2, 3, 128, 200, [3, 150]),  # T = 3 (verification): a row holding only the new tokens
        (1, 32, 4, 5, 128, 64, [64]),  # 40 query rows per KV head: row blocks
        (4, 8, 8, 1, 256, 2048, [2048, 1, 1500, 777]),  # head_dim 256
    ],
    ids=["d64-hkv1", "d96", "t3", "t5-gqa8", "d256"],
)
def test_odd_shapes(fmt, b, hq, hkv, t, d, cap, lens):
    args = make_case(b, hq, hkv, t, d, cap, lens, fmt, torch.bfloat16)
    error = relative_error(run(args), float64_reference(*args))
    assert error < BOUND[torch.bfloat16], f"relative error {error:.2e}"


@pytest.mark.parametrize("fmt", KV_FORMATS)
def test_float32_queries(fmt):
    args = make_case(2, 8, 2, 2, 64, 300, [300, 40], fmt, torch.float32)
    error = relative_error(run(args), float64_reference(*args))
    assert error < BOUND[torch.float32], f"relative error {error:.2e}"


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("chunk", [64, 128, 4096], ids=["many-splits", "some-splits", "one-split"])
def test_every_path_writes_every_element(fmt, chunk, monkeypatch):
    """Output and split workspace pre-filled with NaN; many splits, a few, and the direct one-split path."""
    from accel_cuda.kernels import attention

    monkeypatch.setattr(attention, "POISON", True)
    args = make_case(3, 16, 4, 1, 128, 700, [700, 64, 65], fmt, torch.bfloat16)
    got = run(args, config=attention.AttnConfig(chunk=chunk, block_n=64))
    error = relative_error(got, float64_reference(*args))
    assert error < BOUND[torch.bfloat16], f"relative error {error:.2e}"


@pytest.mark.parametrize("fmt", ["none", "int8", "fp8"])
@pytest.mark.parametrize(
    ("b", "hq", "hkv", "t", "d", "cap", "lens", "block_n", "chunk"),
    [
        (3, 32, 8, 1, 128, 1000, [1, 129, 1000], 64, 256),  # GQA 4 decode, ragged rows, several splits
        (3, 32, 8, 1, 128, 1000, [1, 129, 1000], 128, 4096),  # one split: the direct path
        (2, 8, 2, 3, 128, 200, [3, 150], 64, 64),  # T = 3: causal among the new tokens
        (1, 12, 4, 1, 96, 300, [299], 32, 128),  # head_dim not a power of two
        (4, 8, 8, 1, 256, 2048, [2048, 1, 1500, 777], 64, 512),  # head_dim 256
        (1, 64, 8, 1, 128, 500, [500], 64, 128),  # 8 rows in two row blocks of 4
    ],
    ids=["gqa4", "gqa4-direct", "t3", "d96", "d256", "rows8"],
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fma_variant(fmt, b, hq, hkv, t, d, cap, lens, block_n, chunk, dtype, monkeypatch):
    """The CUDA-core split kernel (AttnConfig variant "fma"), output and workspace NaN-poisoned."""
    from accel_cuda.kernels import attention

    monkeypatch.setattr(attention, "POISON", True)
    args = make_case(b, hq, hkv, t, d, cap, lens, fmt, dtype)
    config = attention.AttnConfig(chunk=chunk, block_n=block_n, block_r=4, variant="fma")
    error = relative_error(run(args, config=config), float64_reference(*args))
    assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize(
    ("b", "hq", "hkv", "t", "d", "cap", "lens", "block_n", "chunk", "block_r"),
    [
        (3, 32, 8, 1, 128, 1000, [1, 129, 1000], 128, 256, 16),  # GQA 4 decode, ragged rows, several splits
        (3, 32, 8, 1, 128, 1000, [1, 129, 1000], 128, 4096, 16),  # one split: the direct path
        (2, 8, 2, 3, 128, 200, [3, 150], 64, 64, 16),  # T = 3: causal among the new tokens
        (1, 12, 4, 1, 96, 300, [299], 32, 128, 16),  # head_dim not a power of two (masked channels)
        (1, 64, 8, 1, 64, 500, [500], 64, 128, 64),  # head_dim 64, 8 rows a group
    ],
    ids=["gqa4", "gqa4-direct", "t3", "d96", "d64-rows8"],
)
@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["unit", "large-q"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_scores_on_int8_tensor_cores(b, hq, hkv, t, d, cap, lens, block_n, chunk, block_r, scale, dtype,
                                          monkeypatch):
    """AttnConfig(qk_int8=True): the query as an int8 pair (hi + lo / 256) dotted with the cached int8 keys on the
    int8 tensor cores; as exact as the fp16 route against float64, NaN-poisoned outputs and workspace."""
    from accel_cuda.kernels import attention

    monkeypatch.setattr(attention, "POISON", True)
    q, *rest = make_case(b, hq, hkv, t, d, cap, lens, "int8", dtype)
    args = ((q.float() * scale).to(dtype), *rest)
    config = attention.AttnConfig(chunk=chunk, block_n=block_n, block_r=block_r, qk_int8=True)
    error = relative_error(run(args, config=config), float64_reference(*args))
    assert error < BOUND[dtype], f"relative error {error:.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_int8_unaligned_cache_reads_bytes(dtype):
    """int8 codes whose strides are not multiples of 4 cannot be read as words: the byte path runs instead."""
    b, hq, hkv, d, cap = 2, 32, 8, 128, 300
    q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, lens, fmt, scale = make_case(
        b, hq, hkv, 1, d, cap, [300, 77], "int8", dtype
    )
    padded = [torch.zeros(b, hkv, cap, d + 1, dtype=torch.int8, device="cuda") for _ in range(2)]
    padded[0][..., 1:] = k_codes
    padded[1][..., 1:] = v_codes
    args = (q, padded[0][..., 1:], k_scale, k_zero, padded[1][..., 1:], v_scale, v_zero, lens, fmt, scale)
    error = relative_error(run(args), float64_reference(*args))
    assert error < BOUND[dtype], f"relative error {error:.2e}"


def test_variant_is_checked():
    from accel_cuda.kernels import attention

    args = make_case(1, 8, 2, 1, 64, 64, [64], "int4", torch.bfloat16)
    with pytest.raises(ValueError, match="variant"):
        run(args, config=attention.AttnConfig(chunk=64, variant="fma"))


def test_cuda_graph_replays_with_new_lengths():
    """No host sync: the launch captures into a CUDA graph, and a replay reads the lengths now in the buffer."""
    args = list(make_case(2, 32, 8, 1, 128, 4096, [4096, 100], "int8", torch.bfloat16))
    run(args)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run(args)
    args[7].copy_(torch.tensor([2000, 3333], dtype=torch.int32))
    graph.replay()
    torch.cuda.synchronize()
    error = relative_error(out, float64_reference(*args))
    assert error < BOUND[torch.bfloat16], f"relative error {error:.2e}"


def test_registry_and_custom_op_run_the_kernel():
    from accel.runtime.custom_ops import kernel_choice

    assert kernel_choice("cached_attention", "cuda").backend == "cuda"
    op = OPS["cached_attention"]
    for make_inputs in op.input_makers:
        args = make_inputs(torch.Generator().manual_seed(1), "cuda", torch.bfloat16)
        expected = float64_reference(*args)
        error = relative_error(torch.ops.accel.cached_attention(*args), expected)
        assert error < BOUND[torch.bfloat16], f"{args[8]}: relative error {error:.2e}"
