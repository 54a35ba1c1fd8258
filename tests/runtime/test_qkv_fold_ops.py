"""qkv_fold_ops.w4a16_linear_rope_kv, the q/k/v W4A16 projection with RoPE and the KV cache write folded in: the
returned q and the stored k / v against float64 (linear, folded norm, rotation), bit for bit the unfused chain
(w4a16_linear or w4a16_linear_rms, then rotary_kv_cache_write) in every KV format, clear errors naming the argument,
the conformance inputs and kit, and the custom op."""

from __future__ import annotations

import math

import pytest
import torch

from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.kv_ops import KV_FORMATS, kv_quantize
from accel.runtime.norm_fold_ops import sum_of_squares, w4a16_linear_rms
from accel.runtime.ops import OPS, w4a16_linear, w4a16_weight
from accel.runtime.packing import pack_int32
from accel.runtime.qkv_fold_ops import w4a16_linear_rope_kv
from accel.runtime.rope_kv_ops import rotary_kv_cache_write

OP = OPS["w4a16_linear_rope_kv"]
# Relative error against float64: float32 far under 1e-5; bf16 rounds y, then each product and sum of the rotation.
BOUND = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def case(b, rows, t, h, hkv, d, cap, k, fmt, dtype, *, rms, symmetric=False, group=64, table_batch=None, seed=0):
    """The op's arguments: a stacked q | k | v weight [(h + 2 hkv) d, k] of N(0, 1 / k), quantized; x [b, t, k] (with
    rms, h * w of an h with rows 1e-2 .. 1e2, and h's sums of squares); cos / sin [table_batch or b, t, d] of random
    values; distinct positions per row in random order; stores of `rows` >= b rows already holding quantized data."""
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn((h + 2 * hkv) * d, k, generator=gen) / math.sqrt(k)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=group))
    packed, scale, zero = pack_int32(qw.q, 4), qw.scale.to(dtype), None if symmetric else qw.zero_point
    if rms:
        stream = (torch.randn(b, t, k, generator=gen) * torch.logspace(-2, 2, b * t).reshape(b, t, 1)).to(dtype)
        x = (stream.float() * (1.0 + 0.5 * torch.randn(k, generator=gen))).to(dtype)
        ss = sum_of_squares(stream)
    else:
        x, ss = torch.randn(b, t, k, generator=gen).to(dtype), None
    cos, sin = (torch.randn(table_batch or b, t, d, generator=gen).to(dtype) for _ in range(2))
    positions = torch.stack([torch.randperm(cap, generator=gen)[:t] for _ in range(b)])
    old = torch.randn(2, rows, hkv, cap, d, generator=gen)
    stores = [part for s in old for part in kv_quantize(s.to(dtype) if fmt == "none" else s, fmt)]
    return [x, packed, scale, zero, group, ss, 1e-5, cos, sin, positions, *stores, fmt, h]


def clones(args):
    return [a.clone() if isinstance(a, torch.Tensor) else a for a in args]


def same_bytes(got, want) -> bool:
    return all(
        (g is None and w is None) or torch.equal(g.view(torch.uint8), w.view(torch.uint8))
        for g, w in zip(got, want, strict=True)
    )


def rotate64(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin in float64, x [B, T, heads, D], the tables [B|1, T, D]."""
    x1, x2 = x.chunk(2, dim=-1)
    cos, sin = cos.double().unsqueeze(2), sin.double().unsqueeze(2)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want).norm() / want.norm())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case_index", [0, 1], ids=["rms-T3", "plain-T1"])
def test_q_and_the_stored_k_v_are_the_float64_projection_rotated(dtype, case_index):
    """The op's own inputs (a folded norm at T = 3; a plain decode step): the returned q and the k / v stored at each
    row's positions ("none" stores hold them as they are) equal linear (times r = 1 / sqrt(sum(ss) / K + eps) where
    ss is given), split into heads, then RoPE, all in float64."""
    args = OP.input_makers[case_index](torch.Generator().manual_seed(3), "cpu", dtype)
    x, packed, scale, zero, group, ss, eps, cos, sin, positions, k_codes, _, _, v_codes, _, _, fmt, h = args
    assert fmt == "none" and (ss is not None) == (case_index == 0)
    b, t, k = x.shape
    d = cos.shape[-1]
    hkv = k_codes.shape[1]

    q = w4a16_linear_rope_kv(*args)

    y = x.double() @ w4a16_weight(k, packed, scale, zero, group).double().T  # [B, T, N]
    if ss is not None:
        y = y * torch.rsqrt(ss.double().sum(-1, keepdim=True) / k + eps)
    q64, k64, v64 = y.split((h * d, hkv * d, hkv * d), dim=-1)
    q64 = rotate64(q64.reshape(b, t, h, d), cos, sin)
    k64 = rotate64(k64.reshape(b, t, hkv, d), cos, sin)
    v64 = v64.reshape(b, t, hkv, d)
    assert q.shape == (b, t, h, d) and q.dtype == dtype and q.is_contiguous()
    assert relative(q, q64) < BOUND[dtype]
    stored_k = torch.stack([k_codes[row, :, positions[row]].transpose(0, 1) for row in range(b)])  # [B, T, Hkv, D]
    stored_v = torch.stack([v_codes[row, :, positions[row]].transpose(0, 1) for row in range(b)])
    assert relative(stored_k, k64) < BOUND[dtype]
    assert relative(stored_v, v64) < BOUND[dtype]
    # each row of the result on its own: the norm's r differs by 1e4 between rows, which a global norm would hide
    for row in range(b):
        assert relative(q[row], q64[row]) < BOUND[dtype]
        assert relative(stored_k[row], k64[row]) < BOUND[dtype]


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("b", "rows", "t", "h", "hkv", "d", "cap", "k", "rms", "symmetric", "group", "table_batch"),
    [
        (1, 1, 1, 8, 2, 64, 16, 200, True, False, 64, None),  # decode, batch 1, a folded norm
        (3, 4, 1, 5, 1, 96, 40, 512, False, True, 128, None),  # odd heads, head_dim 96, a row left alone
        (2, 2, 5, 6, 3, 64, 9, 136, True, False, 64, 1),  # T > 1 with one table for the batch, K = 136
    ],
)
def test_is_the_unfused_chain_bit_for_bit(
    fmt, dtype, b, rows, t, h, hkv, d, cap, k, rms, symmetric, group, table_batch
):
    """w4a16_linear (w4a16_linear_rms given ss), q / k / v views of its output, then rotary_kv_cache_write on its own
    stores: the same q and every byte of the stores."""
    args = case(
        b, rows, t, h, hkv, d, cap, k, fmt, dtype, rms=rms, symmetric=symmetric, group=group, table_batch=table_batch
    )
    x, packed, scale, zero, group, ss, eps, cos, sin, positions, *stores, fmt, h = args
    expected = [None if s is None else s.clone() for s in stores]
    if ss is None:
        y = w4a16_linear(x, packed, scale, zero, group)
    else:
        y = w4a16_linear_rms(x, packed, scale, zero, group, ss, eps)
    q, kk, v = y.split((h * d, hkv * d, hkv * d), dim=-1)
    want_q = rotary_kv_cache_write(
        q.view(b, t, h, d), kk.view(b, t, hkv, d), v.view(b, t, hkv, d), cos, sin, positions, *expected, fmt
    )
    before = clones(stores)

    got_q = w4a16_linear_rope_kv(*args)

    assert got_q.dtype == dtype and torch.equal(got_q, want_q)
    assert same_bytes(stores, expected)
    assert not same_bytes(stores, before)  # the write happened


def test_plain_and_folded_norm_differ_by_the_rows_scale():
    """ss selects the folded norm: with ss the projection is r times the plain one, r = 1 / sqrt(sum(ss) / K + eps)
    per row (so an op that ignored ss, or applied r to a single row, would show)."""
    args = case(3, 3, 2, 4, 2, 32, 8, 200, "none", torch.float32, rms=True)
    plain = clones(args)
    plain[5] = None
    folded_q, plain_q = w4a16_linear_rope_kv(*args), w4a16_linear_rope_kv(*plain)
    ss, k, eps = args[5], args[0].shape[-1], args[6]
    r = torch.rsqrt(ss.sum(-1, keepdim=True) / k + eps)  # [B, T, 1]
    torch.testing.assert_close(folded_q, plain_q * r.unsqueeze(-1), rtol=1e-5, atol=1e-6)
    assert r.max() / r.min() > 1e3


def test_op_inputs_cover_the_folded_norm_the_plain_projection_and_a_quantized_cache():
    seen = set()
    for make_inputs in OP.input_makers:
        args = make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
        x, packed, _, zero, group, ss, _, cos, _, positions, k_codes, *_, fmt, h = args
        b, t, k = x.shape
        d, hkv = cos.shape[-1], k_codes.shape[1]
        assert packed.shape[0] == (h + 2 * hkv) * d and h % hkv and k_codes.shape[0] > b
        assert cos.shape == (b, t, d) and positions.shape == (b, t)
        seen.add((ss is not None, fmt, t, zero is not None, k, group))
        if ss is not None:
            assert ss.shape[:2] == (b, t) and ss.dtype == torch.float32
    assert seen == {
        (True, "none", 3, True, 200, 64),
        (False, "none", 1, False, 512, 128),
        (True, "int8", 1, True, 200, 64),
    }


def test_op_result_is_q_then_the_stores_and_leaves_the_inputs_alone():
    args = OP.variants[1](torch.Generator().manual_seed(0), "cpu", torch.float32)  # int8, after a folded norm
    before = clones(args)
    got = OP.result(OP.reference, args)
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True) if isinstance(a, torch.Tensor))
    fresh = clones(args)
    q_rot = w4a16_linear_rope_kv(*fresh)
    assert torch.equal(got, torch.cat([q_rot.reshape(-1), OP.observe(tuple(fresh)).reshape(-1)]))
    assert not torch.equal(OP.observe(tuple(fresh)), OP.observe(args))  # the write changed the (cloned) stores


def test_the_conformance_kit_judges_q_and_every_store():
    """The kit (accel.testing) passes the reference served as a kernel and rejects kernels that drop the folded norm,
    leave k unrotated, or store k as v: OpSpec.result judges the returned q and the stores together."""
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
            kernels=lambda: {"w4a16_linear_rope_kv": kernel},
        )

    def views(args):  # type: ignore[no-untyped-def]
        x, packed, scale, zero, group, ss, eps, cos, *_, h = args
        d = cos.shape[-1]
        hkv = (packed.shape[0] // d - h) // 2
        if ss is None:
            y = w4a16_linear(x, packed, scale, zero, group)
        else:
            y = w4a16_linear_rms(x, packed, scale, zero, group, ss, eps)
        q, k, v = y.split((h * d, hkv * d, hkv * d), dim=-1)
        return q.unflatten(-1, (h, d)), k.unflatten(-1, (hkv, d)), v.unflatten(-1, (hkv, d))

    def norm_dropped(*args):  # type: ignore[no-untyped-def]
        return w4a16_linear_rope_kv(*args[:5], None, *args[6:])

    def k_unrotated(*args):  # type: ignore[no-untyped-def]
        from accel.runtime.kv_ops import kv_cache_write
        from accel.runtime.rope_ops import rotary_embedding

        q, k, v = views(args)
        cos, sin, positions, *stores_fmt, _ = args[7:]
        kv_cache_write(k.transpose(1, 2), v.transpose(1, 2), positions, *stores_fmt)
        return rotary_embedding(q, k, cos, sin)[0]

    def v_as_k(*args):  # type: ignore[no-untyped-def]
        q, k, _ = views(args)
        return rotary_kv_cache_write(q, k, k, *args[7:-1])

    check = checks_for(backend(w4a16_linear_rope_kv))[-1]
    check(backend(w4a16_linear_rope_kv))
    for kernel in (norm_dropped, k_unrotated, v_as_k):
        with pytest.raises(AssertionError):
            check(backend(kernel))


def good_args() -> list:
    """The op's main inputs (a folded norm, T = 3, "none" stores), which pass every check."""
    return list(OP.make_inputs(torch.Generator().manual_seed(0), "cpu", torch.float32))


OWN = "w4a16_linear_rope_kv: "  # this op's own checks (the head counts); the composed ops' carry their names


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (17, lambda a: 4, OWN + r"num_heads = 4 does not fit weight_packed's 9 heads of D = 96 rows"),  # 5 left: odd
        (17, lambda a: 9, OWN + "num_heads = 9 .* a positive even number"),  # no k / v heads left
        (17, lambda a: 0, OWN + "num_heads = 0 "),
        (17, lambda a: 3, OWN + r"k_codes \(4, 2, 40, 96\) must be \[B', Hkv, S, c\] with Hkv = 3"),
        (10, lambda a: a[10][:, :1], OWN + r"k_codes .* with Hkv = 2"),
        (1, lambda a: a[1][:-1], OWN + "weight_packed's 863 rows must be a multiple of head_dim D = 96"),
        (0, lambda a: a[0][0], OWN + r"x must be \[B, T, K\]"),
        (7, lambda a: a[7][0], OWN + r"cos must be \[B or 1, T, D\]"),
        (2, lambda a: a[2][:-96], r"w4a16_linear: packed \(864, 25\), scale \(768, 4\) do not fit"),
        (5, lambda a: a[5][:, :1], "w4a16_linear_rms: ss "),
        (16, lambda a: "int3", "rotary_kv_cache_write: .*format must be one of"),
        (9, lambda a: a[9][:, :1], r"rotary_kv_cache_write: .*positions must be int32/int64 \[B, T\]"),
        (13, lambda a: a[13][..., :-1], "rotary_kv_cache_write: .*v_codes"),
    ],
)
def test_bad_arguments_name_the_argument_and_write_nothing(index, bad, match):
    args = good_args()
    args[index] = bad(args)
    before = clones(args)
    with pytest.raises(ValueError, match="^" + match):
        w4a16_linear_rope_kv(*args)
    assert same_bytes([a for a in args[10:16] if a is not None], [a for a in before[10:16] if a is not None])


@pytest.mark.parametrize("case_index", [0, 1, 2], ids=["rms-none-T3", "plain-none-T1", "rms-int8-T1"])
def test_custom_op_is_the_reference_and_mutates_the_stores(case_index):
    """torch.ops.accel.w4a16_linear_rope_kv on the CPU: the same q and store bytes as the reference, the stores changed
    in place; and compiled with fullgraph, a read of the stores after it sees the write."""
    import accel.runtime.custom_ops  # noqa: F401  (registers torch.ops.accel)

    args = OP.input_makers[case_index](torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
    reference, custom, compiled_args = clones(args), clones(args), clones(args)
    want = w4a16_linear_rope_kv(*reference)
    got = torch.ops.accel.w4a16_linear_rope_kv(*custom)
    assert torch.equal(got, want)
    stores = [a for a in custom[10:16] if a is not None]
    assert same_bytes(stores, [a for a in reference[10:16] if a is not None])
    assert not same_bytes(stores, [a for a in args[10:16] if a is not None])

    def step(*op_args):
        q_rot = torch.ops.accel.w4a16_linear_rope_kv(*op_args)
        return q_rot * 2, op_args[10].float().sum()  # the K codes, read after the write

    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)
    got_q, got_sum = compiled(*compiled_args)
    assert torch.equal(got_q, want * 2) and torch.equal(got_sum, reference[10].float().sum())
    assert same_bytes(
        [a for a in compiled_args if isinstance(a, torch.Tensor)], [a for a in reference if isinstance(a, torch.Tensor)]
    )
