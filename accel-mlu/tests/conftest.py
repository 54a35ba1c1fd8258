"""A stand-in torch_mlu_ops for tests without an MLU: the operators accel-mlu calls, taking the arguments the way
DeepLink's dlinfer passes them (dlinfer/vendor/camb/camb_ops.py; torch_mlu_ops has no public API reference),
checking dtypes and shapes, computing the operation in float32 on the CPU, and recording each call."""

from __future__ import annotations

import sys
import types

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mlu: needs a Cambricon MLU with torch_mlu; skipped without one")


class FakeTorchMluOps(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("torch_mlu_ops")
        self.calls: list[str] = []

    def per_token_smooth_quantize(self, x, smooth):
        self.calls.append("per_token_smooth_quantize")
        assert x.dim() == 2 and smooth.shape == (x.shape[1],)
        smoothed = x.float() * smooth
        scale = smoothed.abs().amax(dim=-1) / 127
        return torch.round(smoothed / scale.clamp_min(1e-12)[:, None]).clamp(-127, 127).to(torch.int8), scale

    def smooth_quant_matmul(self, a, a_scale, b, b_scale, dtype, bias=None):
        self.calls.append("smooth_quant_matmul")
        assert a.dtype == torch.int8 and b.dtype == torch.int8 and a.shape[1] == b.shape[1], "b is [N, K]"
        assert a_scale.shape == (a.shape[0],) and b_scale.shape == (b.shape[0],)
        y = (a.double() @ b.double().T).float() * a_scale[:, None] * b_scale
        return (y if bias is None else y + bias.float()).to(dtype)

    def single_query_cached_kv_attn(self, q, k_cache, v_cache, out, block_tables, context_lens, k_cache_quant_scale,
                                    v_cache_quant_scale, alibi_slopes, max_context_len, window_size_left,
                                    window_size_right, softmax_scale):
        self.calls.append("single_query_cached_kv_attn")
        batch, seq, heads, _ = q.shape
        kv_heads = k_cache.shape[1]
        assert seq == 1 and out.shape == q.shape and k_cache.shape == v_cache.shape and heads % kv_heads == 0
        assert block_tables.dtype == torch.int32 and context_lens.dtype == torch.int32
        assert k_cache_quant_scale is None and v_cache_quant_scale is None and alibi_slopes is None
        assert max_context_len >= int(context_lens.max())
        for row in range(batch):
            length = int(context_lens[row])
            pages = [k_cache[block] for block in block_tables[row].tolist()]
            keys = torch.cat(pages, dim=1)[:, :length].float().repeat_interleave(heads // kv_heads, dim=0)
            values = torch.cat([v_cache[block] for block in block_tables[row].tolist()], dim=1)[:, :length]
            values = values.float().repeat_interleave(heads // kv_heads, dim=0)
            scores = torch.einsum("hd,hsd->hs", q[row, 0].float(), keys) * softmax_scale
            out[row, 0] = torch.einsum("hs,hsd->hd", torch.softmax(scores, dim=-1), values).to(out.dtype)


@pytest.fixture
def fake_tmo(monkeypatch):
    """The stand-in torch_mlu_ops importable, and CPU tensors treated as the MLU by accel_mlu.kernels."""
    from accel_mlu import kernels

    fake = FakeTorchMluOps()
    monkeypatch.setitem(sys.modules, "torch_mlu_ops", fake)
    monkeypatch.setattr(kernels, "DEVICE_TYPE", "cpu")
    return fake
