"""kv_ops.kv_cache_write, the reference of the fused KV cache write: exactly kv_quantize, then each token stored at
its position, rows and positions not written left as they were, and clear errors for arguments off the contract."""

from __future__ import annotations

import pytest
import torch

from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize
from accel.runtime.ops import OPS


def as_bytes(t: torch.Tensor | None) -> torch.Tensor | None:
    """A store's raw bytes: fp8 and NaN-poisoned floats compare exactly this way."""
    return None if t is None else t.contiguous().view(torch.uint8)


def poisoned_stores(rows, heads, cap, d, fmt, dtype, gen):
    """[k_codes, k_scale, k_zero, v_codes, v_scale, v_zero] of `fmt`, filled with random bytes (NaN and inf among
    them), so a position written that should not be, or not written that should, shows."""
    template = kv_quantize(torch.zeros(1, 1, 1, d, dtype=dtype), fmt)
    stores = []
    for _ in range(2):
        for part in template:
            if part is None:
                stores.append(None)
                continue
            shape = (rows, heads, cap, part.shape[-1])
            raw = torch.randint(0, 256, (*shape[:-1], shape[-1] * part.element_size()), generator=gen)
            stores.append(raw.to(torch.uint8).view(part.dtype))
    return stores


def expected_after(k, v, positions, stores, fmt):
    """Stores after the write by the definition: kv_quantize(k) token by token into a copy of the stores."""
    out = [None if s is None else s.clone() for s in stores]
    for which, new in enumerate((k, v)):
        for part, fresh in enumerate(kv_quantize(new, fmt)):
            store = out[3 * which + part]
            if store is None:
                continue
            fresh = fresh.to(store.dtype)
            for b in range(k.shape[0]):
                for t in range(k.shape[2]):
                    store.view(torch.uint8)[b, :, int(positions[b, t])] = fresh.view(torch.uint8)[b, :, t]
    return out


@pytest.mark.parametrize("fmt", KV_FORMATS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize(("b", "rows", "h", "t", "d", "cap"), [(3, 4, 2, 1, 96, 40), (2, 2, 3, 7, 64, 9)])
def test_write_is_quantize_then_store_at_each_position(fmt, dtype, b, rows, h, t, d, cap):
    gen = torch.Generator().manual_seed(10 * KV_FORMATS.index(fmt) + t)
    k, v = (torch.randn(b, h, t, d, generator=gen) * torch.logspace(-2, 2, t).view(1, 1, t, 1) for _ in range(2))
    k, v = k.to(dtype), v.to(dtype)
    positions = torch.stack([torch.randperm(cap, generator=gen)[:t] for _ in range(b)])  # any distinct positions
    stores = poisoned_stores(rows, h, cap, d, fmt, dtype, gen)
    expected = expected_after(k, v, positions, stores, fmt)
    kv_cache_write(k, v, positions.to(torch.int32), *stores, fmt)
    for got, want in zip(stores, expected, strict=True):
        assert (got is None) == (want is None)
        if got is not None:
            assert torch.equal(as_bytes(got), as_bytes(want))


def test_prompt_positions_may_be_an_expanded_range():
    gen = torch.Generator().manual_seed(0)
    k, v = torch.randn(2, 2, 3, 5, 64, generator=gen)
    stores = poisoned_stores(2, 3, 8, 64, "int8", torch.float32, gen)
    positions = torch.arange(5).expand(2, 5)  # what StaticKVCache.write_prompt passes: stride 0 along rows
    expected = expected_after(k, v, positions, stores, "int8")
    kv_cache_write(k, v, positions, *stores, "int8")
    assert all(torch.equal(as_bytes(g), as_bytes(w)) for g, w in zip(stores, expected, strict=True) if g is not None)


def test_none_casts_to_the_stores_dtype_as_copy_would():
    k, v = torch.randn(2, 2, 1, 2, 32)  # B = 2, H = 1, T = 2
    k_codes, v_codes = torch.zeros(2, 3, 1, 4, 32, dtype=torch.bfloat16)  # one row more than k's
    positions = torch.tensor([[3, 0], [1, 2]])
    kv_cache_write(k, v, positions, k_codes, None, None, v_codes, None, None, "none")
    for b in range(2):
        assert torch.equal(k_codes[b, :, positions[b]], k[b].to(torch.bfloat16))
        assert torch.equal(v_codes[b, :, positions[b]], v[b].to(torch.bfloat16))
    assert k_codes[2].abs().sum() == 0 and v_codes[2].abs().sum() == 0  # rows past k's are left alone


def good_args() -> list:
    """int4 arguments (T = 5) that pass every check."""
    return list(OPS["kv_cache_write"].variants[-1](torch.Generator().manual_seed(0), "cpu", torch.float32))


@pytest.mark.parametrize(
    ("index", "bad", "match"),
    [
        (0, lambda a: a[0][0], "k must be a floating"),
        (1, lambda a: a[1][:, :1], "v must be floating and shaped like k"),
        (2, lambda a: a[2][:, :1], r"positions must be int32/int64 \[B, T\]"),
        (2, lambda a: a[2].float(), "positions must be int32/int64"),
        (3, lambda a: a[3][:2], r"k_codes must be \[B' >= 3"),
        (4, lambda a: a[4].float(), "k_scale must be float16"),
        (5, lambda a: None, "k_zero must be float16"),
        (6, lambda a: a[6][..., :-1], "v_codes must be uint8"),
        (8, lambda a: a[8][:, :, :-1], "v_zero must be float16"),
        (1, lambda a: a[1].to("meta"), "v is on meta"),
    ],
)
def test_bad_arguments_name_the_argument(index, bad, match):
    args = good_args()
    args[index] = bad(args)
    with pytest.raises(ValueError, match=match):
        kv_cache_write(*args)


def test_format_checks():
    args = good_args()
    with pytest.raises(ValueError, match="format must be one of"):
        kv_cache_write(*args[:-1], "int3")
    with pytest.raises(ValueError, match="k_codes must be int8"):  # int4 stores given for int8
        kv_cache_write(*args[:-1], "int8")
    k, v = torch.randn(2, 1, 1, 1, 48)
    with pytest.raises(ValueError, match="head_dim divisible by 32"):
        kv_cache_write(k, v, torch.zeros(1, 1, dtype=torch.long), *args[3:-1], "int4")
    codes = torch.zeros(1, 1, 4, 48)
    with pytest.raises(ValueError, match="k_scale must be None for fmt 'none'"):
        kv_cache_write(k, v, torch.zeros(1, 1, dtype=torch.long), codes, codes, None, codes, None, None, "none")
    with pytest.raises(ValueError, match="v_codes must have k_codes' dtype"):
        kv_cache_write(k, v, torch.zeros(1, 1, dtype=torch.long), codes, None, None, codes.half(), None, None, "none")


def test_op_inputs_cover_every_format_ragged_rows_and_untouched_rows():
    op = OPS["kv_cache_write"]
    seen = set()
    for make_inputs in op.input_makers:
        args = make_inputs(torch.Generator().manual_seed(0), "cpu", torch.bfloat16)
        k, positions, k_codes, fmt = args[0], args[2], args[3], args[-1]
        seen.add((fmt, k.shape[2]))
        assert k_codes.shape[0] > k.shape[0], "the store must have rows the write leaves alone"
        assert len(set(positions[:, 0].tolist())) == k.shape[0], "rows must write at different positions"
        assert int(positions.max()) == k_codes.shape[2] - 1 and int(positions.min()) == 0
    assert seen == {(fmt, t) for fmt in KV_FORMATS for t in (1, 5)}


def test_op_result_reads_the_stores_and_leaves_the_inputs_alone():
    op = OPS["kv_cache_write"]
    args = op.variants[1](torch.Generator().manual_seed(0), "cpu", torch.float32)  # int8, T = 1
    before = [a.clone() if isinstance(a, torch.Tensor) else a for a in args]
    after = op.result(op.reference, args)
    assert after.shape == (2, *args[3].shape)
    assert all(torch.equal(a, b) for a, b in zip(args, before, strict=True) if isinstance(a, torch.Tensor))
    assert not torch.equal(after, op.observe(args))  # the write changed the (cloned) stores
