"""A stand-in torch_npu for tests without an NPU: each operator accel-ascend calls, with the signature the torch_npu
docs give (so a misspelt or unknown argument raises TypeError), checking the documented dtype/shape constraints
and computing the documented formula in float32 on the CPU. It records every call."""

from __future__ import annotations

import math
import sys
import types

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "npu: needs an Ascend NPU with torch_npu; skipped without one")


def _pack(codes: torch.Tensor) -> torch.Tensor:
    """Eight int4 values per int32 along the last dim, in an order of its own (first value in the top nibble), so a
    caller that assumed accel's own order would read wrong values back."""
    nibbles = (codes.to(torch.int64) & 0xF).unflatten(-1, (-1, 8))
    word = sum(nibbles[..., i] << (4 * (7 - i)) for i in range(8))
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    word = packed.to(torch.int64) & 0xFFFFFFFF
    nibbles = torch.stack([(word >> (4 * (7 - i))) & 0xF for i in range(8)], dim=-1).flatten(-2)
    return torch.where(nibbles >= 8, nibbles - 16, nibbles)


class FakeTorchNpu(types.ModuleType):
    """torch_npu's operators as documented in Ascend/op-plugin docs/context/torch_npu-*.md."""

    def __init__(self) -> None:
        super().__init__("torch_npu")
        self.calls: list[str] = []

    def npu_convert_weight_to_int4pack(self, weight, inner_k_tiles=0):
        self.calls.append("npu_convert_weight_to_int4pack")
        assert weight.dtype == torch.int32 and weight.dim() == 2 and weight.is_contiguous()
        assert weight.shape[-1] % 8 == 0, "last dimension must be 8-aligned"
        assert int(weight.min()) >= -8 and int(weight.max()) <= 7, "values must be in int4 range"
        return _pack(weight)

    def npu_weight_quant_batchmatmul(self, x, weight, antiquant_scale, antiquant_offset=None, quant_scale=None,
                                     quant_offset=None, bias=None, antiquant_group_size=0, inner_precise=0):
        self.calls.append("npu_weight_quant_batchmatmul")
        assert x.dim() == 2 and x.dtype in (torch.float16, torch.bfloat16)
        if weight.dtype == torch.int32:  # int4 carried in int32: (K, N/8), or the transpose of a packed (N, K/8)
            w = _unpack(weight.transpose(0, 1)).transpose(0, 1) if not weight.is_contiguous() else _unpack(weight)
        else:
            assert weight.dtype == torch.int8
            w = weight
        k, n = w.shape
        assert x.shape[1] == k, f"x (M, {x.shape[1]}) and weight (K, N) = {tuple(w.shape)}"
        assert antiquant_scale.dtype == x.dtype, "antiquant_scale must have x's dtype"
        group = antiquant_group_size
        if group:
            assert group % 32 == 0 and 32 <= group <= k - 1, "group size: a multiple of 32 in [32, K-1]"
            assert tuple(antiquant_scale.shape) == (math.ceil(k / group), n)
            rows = torch.arange(k) // group
        else:
            assert tuple(antiquant_scale.shape) in ((1, n), (n,))
            rows = torch.zeros(k, dtype=torch.int64)
        scale = antiquant_scale.float().reshape(-1, n)[rows]
        offset = 0.0
        if antiquant_offset is not None:
            assert antiquant_offset.shape == antiquant_scale.shape and antiquant_offset.dtype == antiquant_scale.dtype
            offset = antiquant_offset.float().reshape(-1, n)[rows]
        y = x.float() @ ((w.float() + offset) * scale)
        if bias is not None:
            assert bias.dtype == (torch.float32 if x.dtype == torch.bfloat16 else torch.float16)
            y = y + bias.float()
        assert quant_scale is None and quant_offset is None
        return y.to(x.dtype)

    def npu_dynamic_quant(self, x, *, smooth_scales=None, group_index=None, dst_type=None):
        self.calls.append("npu_dynamic_quant")
        assert x.dtype in (torch.float16, torch.bfloat16) and x.dim() > 1
        scale = x.float().abs().amax(dim=-1) / 127  # rowMax(|x|) / DTYPE_MAX
        q = torch.round(x.float() / scale.clamp_min(1e-12)[..., None]).clamp(-128, 127).to(torch.int8)
        return q, scale

    def npu_quant_matmul(self, x1, x2, scale, *, offset=None, pertoken_scale=None, bias=None, output_dtype=None,
                         group_sizes=None):
        self.calls.append("npu_quant_matmul")
        assert x1.dtype == torch.int8 and x2.dtype == torch.int8 and x1.shape[-1] == x2.shape[0]
        n = x2.shape[1]
        assert scale.dtype == torch.float32 and tuple(scale.shape) in ((n,), (1,))
        assert pertoken_scale is not None and pertoken_scale.dtype == torch.float32
        assert tuple(pertoken_scale.shape) == (x1.shape[0],)
        assert output_dtype in (torch.float16, torch.bfloat16)
        y = (x1.double() @ x2.double()).float() * scale * pertoken_scale[:, None]
        if bias is not None:
            assert bias.dtype in (torch.float32, torch.bfloat16, torch.float16, torch.int32)
            y = y + bias.float()
        return y.to(output_dtype)

    def npu_fused_infer_attention_score(
        self, query, key, value, *, pse_shift=None, atten_mask=None, actual_seq_lengths=None,
        actual_seq_lengths_kv=None, dequant_scale1=None, quant_scale1=None, dequant_scale2=None, quant_scale2=None,
        quant_offset2=None, antiquant_scale=None, antiquant_offset=None, block_table=None, query_padding_size=None,
        kv_padding_size=None, key_antiquant_scale=None, key_antiquant_offset=None, value_antiquant_scale=None,
        value_antiquant_offset=None, key_shared_prefix=None, value_shared_prefix=None, actual_shared_prefix_len=None,
        query_rope=None, key_rope=None, key_rope_antiquant_scale=None, num_heads=1, scale=1.0, pre_tokens=2147483647,
        next_tokens=2147483647, input_layout="BSH", num_key_value_heads=0, sparse_mode=0, inner_precise=0,
        block_size=0, antiquant_mode=0, softmax_lse_flag=False, key_antiquant_mode=0, value_antiquant_mode=0,
    ):
        self.calls.append("npu_fused_infer_attention_score")
        assert input_layout == "BNSD" and query.is_contiguous()
        b, n, q_s, d = query.shape
        assert q_s == 1 and num_heads == n and query.dtype in (torch.float16, torch.bfloat16)
        n_kv = num_key_value_heads or n
        assert key.shape[1] == n_kv and n % n_kv == 0 and key.shape == value.shape
        assert isinstance(actual_seq_lengths_kv, list) and len(actual_seq_lengths_kv) == b
        keys, values = key.float(), value.float()
        if key.dtype == torch.int8:
            assert key_antiquant_mode == 3 and value_antiquant_mode == 3, "per-token + per-head mode"
            s = key.shape[2]
            for t in (key_antiquant_scale, value_antiquant_scale):
                assert t.dtype == torch.float32 and tuple(t.shape) == (b, n_kv, s)
            keys = keys * key_antiquant_scale[..., None]
            values = values * value_antiquant_scale[..., None]
        else:
            assert key.dtype == query.dtype and key_antiquant_scale is None
        out = torch.empty(b, n, 1, d)
        for row in range(b):
            length = actual_seq_lengths_kv[row]
            k_row = keys[row, :, :length].repeat_interleave(n // n_kv, dim=0)  # (N, L, D)
            v_row = values[row, :, :length].repeat_interleave(n // n_kv, dim=0)
            probs = torch.softmax(query[row].float() @ k_row.transpose(1, 2) * scale, dim=-1)  # (N, 1, L)
            out[row] = probs @ v_row
        return out.to(query.dtype), torch.zeros(1)


@pytest.fixture
def fake_npu(monkeypatch):
    """The stand-in torch_npu importable, and CPU tensors treated as the NPU by accel_ascend.kernels."""
    from accel_ascend import kernels

    fake = FakeTorchNpu()
    monkeypatch.setitem(sys.modules, "torch_npu", fake)
    monkeypatch.setattr(kernels, "DEVICE_TYPE", "cpu")
    return fake
