"""rope_kv_ops.rotary_kv_cache_write, the reference of RoPE fused with the KV cache write: bit for bit rotary_embedding
then kv_cache_write in every format (the q it returns and every byte of the stores), its conformance inputs, clear
errors that name the argument, and the custom op under torch.compile."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize
from accel.runtime.ops import OPS
from accel.runtime.rope_kv_ops import rotary_kv_cache_write
from accel.runtime.rope_ops import rotary_embedding

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
OP = OPS["rotary_kv_cache_write"]


def case(b, rows, t, h, hkv, d, cap, fmt, dtype, table_batch=None, seed=0):
    """q, k, v as views of one fused qkv output [B, T, (H + 2 Hkv) D]; cos / sin [table_batch or B, T, D] of random
    values; distinct positions per row in random order; stores of `rows` >= B rows already holding quantized data."""
    gen = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen) * 3).to(dtype)
    q, k, v = qkv.split((h * d, hkv * d, hkv * d), dim=-1)
    cos, sin = (torch.randn(table_batch or b, t, d, generator=gen).to(dtype) for _ in range(2))
    positions = torch.stack([torch.randperm(cap, generator=gen)[:t] for _ in range(b)])
    old = torch.randn(2, rows, hkv, cap, d, generator=gen)
    stores = [part for x in old for part in kv_quantize(x.to(dtype) if fmt == "none" else x, fmt)]
    return q.view(b, t, h, d), k.view(b, t, hkv, d), v.view(b, t, hkv, d), cos, sin, positions, stores


def same_bytes(got, want) -> bool:
    return all(
        (g is None and w is None) or torch.equal(g.view(torch.uint8), w.view(torch.uint8))
        for g, w in zip(got, want, strict=True)
    )


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("b", "rows", "t", "h", "hkv", "d", "cap", "table_batch"),
    [
        (1, 1, 1, 8, 2, 64, 16, None),  # decode, batch 1
        (3, 4, 1, 5, 1, 96, 40, None),  # odd head counts, head_dim 96 (3 int4 groups), a row left alone
        (2, 2, 5, 6, 3, 64, 9, 1),  # T > 1 with one table for the batch
    ],
)
def test_is_rotary_embedding_then_kv_cache_write_bit_for_bit(fmt, dtype, b, rows, t, h, hkv, d, cap, table_batch):
    q, k, v, cos, sin, positions, stores = case(b, rows, t, h, hkv, d, cap, fmt, dtype, table_batch)
    expected = [None if s is None else s.clone() for s in stores]
    want_q, k_rot = rotary_embedding(q, k, cos, sin)
    kv_cache_write(k_rot.transpose(1, 2), v.transpose(1, 2), positions, *expected, fmt)
    got_q = rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, fmt)
    assert got_q.dtype == dtype and got_q.shape == q.shape and got_q.is_contiguous()
    assert torch.equal(got_q, want_q)
    assert same_bytes(stores, expected)


def test_stores_rotated_k_and_v_as_they_are():
    """Format "none": the stores hold rotated k and plain v at each row's positions, nothing else changes."""
    q, k, v, cos, sin, positions, stores = case(2, 3, 2, 4, 2, 32, 8, "none", torch.float32)
    before = [s.clone() for s in stores if s is not None]
    k_codes, _, _, v_codes, _, _ = stores
    rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores, "none")
    k_rot = rotary_embedding(q, k, cos, sin)[1]
    for b in range(2):
        assert torch.equal(k_codes[b, :, positions[b]], k_rot[b].transpose(0, 1))
        assert torch.equal(v_codes[b, :, positions[b]], v[b].transpose(0, 1))
    written = torch.zeros(3, 8, dtype=torch.bool)
    for b in range(2):
        written[b, positions[b]] = True
    for after, old in zip((k_codes, v_codes), before, strict=True):
        assert torch.equal(after.transpose(1, 2)[~written], old.transpose(1, 2)[~written])


def test_op_inputs_cover_every_format_and_the_model_layout():
    seen = set()
    for make_inputs in OP.input_makers:
        q, k, v, cos, _, positions, k_codes, *_, fmt = make_inputs(
            torch.Generator().manual_seed(0), "cpu", torch.bfloat16
        )
        b, t, h, d = q.shape
        seen.add((fmt, t))
        assert h % k.shape[2] and not q.is_contiguous() and not v.is_contiguous()  # odd heads; qkv views
        assert v.data_ptr() - k.data_ptr() == k.shape[2] * d * q.element_size()  # v follows k in one qkv row
        assert cos.shape == (b, t, d) and k_codes.shape[0] > b
        assert any(row.tolist() != sorted(row.tolist()) for row in positions) or t == 1
    assert seen == {(fmt, t) for fmt in KV_FORMATS for t in (1, 3)}


def test_op_result_is_q_then_the_stores_and_leaves_the_inputs_alone():
    args = OP.variants[2](torch.Generator().manual_seed(0), "cpu", torch.float32)  # int8, T = 3
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    got = OP.result(OP.reference, args)
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True) if isinstance(a, torch.Tensor))
    fresh = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    q_rot = rotary_kv_cache_write(*fresh)
    assert torch.equal(got, torch.cat([q_rot.reshape(-1), OP.observe(tuple(fresh)).reshape(-1)]))
    assert not torch.equal(OP.observe(tuple(fresh)), OP.observe(args))  # the write changed the (cloned) stores


def test_the_conformance_kit_judges_q_and_every_store():
    """The kit backends' conformance tests run (accel.testing) passes the reference served as a kernel and rejects
    kernels that get q, k or v wrong: OpSpec.result judges the returned q and the stores together."""
    from accel.plugins.records import KernelBackendSpec
    from accel.schema import CapabilityDescriptor
    from accel.testing import checks_for

    def backend(kernel) -> KernelBackendSpec:  # type: ignore[no-untyped-def]
        return KernelBackendSpec(
            name="test",
            description="test backend",
            device_type="cpu",
            is_available=lambda: True,
            capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"),
            kernels=lambda: {"rotary_kv_cache_write": kernel},
        )

    def q_unrotated(q, k, v, cos, sin, positions, *stores_fmt):  # type: ignore[no-untyped-def]
        rotary_kv_cache_write(q, k, v, cos, sin, positions, *stores_fmt)
        return q.contiguous()

    def k_unrotated(q, k, v, cos, sin, positions, *stores_fmt):  # type: ignore[no-untyped-def]
        kv_cache_write(k.transpose(1, 2), v.transpose(1, 2), positions, *stores_fmt)
        return rotary_embedding(q, k, cos, sin)[0]

    def v_as_k(q, k, v, cos, sin, positions, *stores_fmt):  # type: ignore[no-untyped-def]
        return rotary_kv_cache_write(q, k, k, cos, sin, positions, *stores_fmt)

    check = checks_for(backend(rotary_kv_cache_write))[-1]
    check(backend(rotary_kv_cache_write))
    for kernel in (q_unrotated, k_unrotated, v_as_k):
        with pytest.raises(AssertionError):
            check(backend(kernel))


def good_args() -> list:
    """int4 arguments (T = 3) that pass every check."""
    return list(OPS["rotary_kv_cache_write"].variants[-1](torch.Generator().manual_seed(0), "cpu", torch.float32))


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (0, lambda a: a[0][0], "q must be a floating-point"),
        (1, lambda a: a[1].double(), "k .* must be .* in q's dtype"),
        (2, lambda a: a[2][:, :, :1], r"v must be floating and shaped like k \[B, T, Hkv, D\] = \[3, 3, 2, 96\]"),
        (2, lambda a: a[2].to(torch.int32), "v must be floating"),
        (3, lambda a: a[3][:, :1], r"cos .* must be \[B or 1, T, D\]"),
        (4, lambda a: a[4].half(), "sin .* in q's dtype"),
        (5, lambda a: a[5][:, :1], r"positions must be int32/int64 \[B, T\]"),
        (5, lambda a: a[5].float(), "positions must be int32/int64"),
        (6, lambda a: a[6][:2], r"k_codes must be \[B' >= 3"),
        (7, lambda a: a[7].float(), "k_scale must be float16"),
        (8, lambda a: None, "k_zero must be float16"),
        (9, lambda a: a[9][..., :-1], "v_codes must be uint8"),
        (11, lambda a: a[11][:, :, :-1], "v_zero must be float16"),
        (12, lambda a: "int3", "format must be one of"),
        (5, lambda a: a[5].to("meta"), "positions is on meta"),
    ],
)
def test_bad_arguments_name_the_argument(index, bad, match):
    args = good_args()
    args[index] = bad(args)
    with pytest.raises(ValueError, match="^rotary_kv_cache_write: .*" + match):
        rotary_kv_cache_write(*args)


@pytest.mark.parametrize("case_index", [0, 3, 6], ids=["none", "int8-T3", "int4"])
def test_custom_op_compiles_and_functionalizes_the_write(case_index):
    """torch.ops.accel.rotary_kv_cache_write mutates its (Optional) stores and returns q rotated: compiled with
    fullgraph, the same q and the same store bytes as eagerly, and a read of the stores after it sees the write."""
    import accel.runtime.custom_ops  # noqa: F401  (registers torch.ops.accel)

    args = OP.input_makers[case_index](torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
    eager, compiled_args = ([a.clone() if isinstance(a, torch.Tensor) else a for a in args] for _ in range(2))

    def step(*op_args):
        q_rot = torch.ops.accel.rotary_kv_cache_write(*op_args)
        return q_rot * 2, op_args[6].float().sum()  # the K codes, read after the write

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got, want = compiled(*compiled_args), step(*eager)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert same_bytes(
        [a for a in compiled_args if isinstance(a, torch.Tensor)], [a for a in eager if isinstance(a, torch.Tensor)]
    )
    assert not torch.equal(OP.observe(tuple(eager)), OP.observe(args))
