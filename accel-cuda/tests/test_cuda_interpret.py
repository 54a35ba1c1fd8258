"""The Triton kernels under Triton's interpreter (TRITON_INTERPRET=1): CPU tensors, no GPU, small shapes.

The interpreter runs each program in numpy, so this checks indexing, masking, split/reduce bookkeeping and the
int4 / int8 code arithmetic anywhere Triton is installed. It cannot check bf16 dots (the interpreter multiplies
their raw bits) or fp32 -> fp8 rounding (it carries mantissa overflow wrongly), so it runs fp32 and fp16 queries,
int8 activations, and fp8 only as a stored KV format (fp8 -> float, which it gets right). Skipped without Triton.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from accel_cuda.kernels import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="needs Triton (its interpreter)")

SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.kv_ops import KV_FORMATS, cached_attention, kv_quantize
    from accel.runtime.ops import w8a8_int8_linear
    from accel_cuda.kernels import attention, w8a8, w8a16, wxa16_tma_dot
    from accel_cuda.kernels.nibbles import permute_nibbles
    from accel.runtime.packing import pack_int32

    attention.POISON = w8a8.POISON = True
    gen = torch.Generator().manual_seed(0)
    worst = {}
    for fmt in KV_FORMATS:
        for b, hq, hkv, t, d, cap, lens in [(2, 8, 2, 1, 96, 70, [70, 3]), (2, 16, 2, 3, 64, 40, [3, 40])]:
            for dtype in (torch.float32, torch.float16):
                q = torch.randn(b, hq, t, d, generator=gen).to(dtype)
                k, v = (torch.randn(b, hkv, cap, d, generator=gen) for _ in range(2))
                if fmt == "none":
                    k, v = k.to(dtype), v.to(dtype)
                args = (q, *kv_quantize(k, fmt), *kv_quantize(v, fmt), torch.tensor(lens), fmt, d**-0.5)
                expected = cached_attention(*args).double()
                config = attention.AttnConfig(chunk=32, block_n=16, block_r=16 if hq // hkv * t <= 16 else 64)
                got = attention.cached_attention(*args, config=config).double()
                key = (fmt, str(dtype))
                worst[key] = max(worst.get(key, 0.0), float((got - expected).norm() / expected.norm()))
    for m, n, k, split in [(5, 40, 200, 1), (3, 24, 256, 2)]:
        x = torch.randn(m, k, generator=gen)
        weight = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
        scale, bias = torch.rand(n, 1, generator=gen) * 1e-2, torch.randn(n, generator=gen)
        config = w8a8.W8Config(block_m=16, block_n=16, block_k=64, split=split)
        got = w8a8.w8a8_int8_linear(x, weight, scale, bias, config=config).double()
        expected = w8a8_int8_linear(x, weight, scale, bias).double()
        worst[("int8-linear", str(split))] = float((got - expected).norm() / expected.norm())
    # TMA tensor-core W4A16 / W8A16 (descriptors run as strided copies here): group 128 sym / asym, per channel.
    for bits, n, k, m, zp, groups, cfg in [
        (4, 128, 1024, 5, False, 8, wxa16_tma_dot.TmaDotConfig(64, 16, 1, 2, 2, 4)),
        (4, 128, 2048, 17, True, 16, wxa16_tma_dot.TmaDotConfig(64, 32, 2, 2, 2, 4)),
        (8, 128, 2048, 20, True, 16, wxa16_tma_dot.TmaDotConfig(128, 16, 2, 4, 2, 4)),
        (8, 64, 1024, 7, True, 1, wxa16_tma_dot.TmaDotConfig(64, 16, 1, 2, 2, 4)),
    ]:
        lo, hi = (-8, 8) if bits == 4 else (-128, 128)
        q = torch.randint(lo, hi, (n, k), generator=gen, dtype=torch.int8)
        s = (torch.rand(n, groups, generator=gen) * 0.02 + 0.001).half()
        z = torch.randint(-3, 3, (n, groups), generator=gen, dtype=torch.int8) if zp else None
        x = torch.randn(m, k, generator=gen).half()
        cols = torch.arange(k) * groups // k
        w = (q.double() - (z.double()[:, cols] if zp else 0.0)) * s.double()[:, cols]
        words = permute_nibbles(pack_int32(q, 4)) if bits == 4 else q
        out = torch.full((m, n), float("nan"), dtype=torch.half)
        got = wxa16_tma_dot.wxa16_tma_dot(x, words, s, z, bits=bits, config=cfg, out=out).double()
        expected = x.double() @ w.T
        worst[(f"tma-dot-w{bits}-g{groups}", str(torch.float16))] = float((got - expected).norm() / expected.norm())
    # W8A16 dequantize (the path above M = 128): a partial last group with zero points, and per channel.
    for n, k, group, groups, zp in [(40, 200, 64, 4, True), (24, 96, -1, 1, False)]:
        q = torch.randint(-128, 128, (n, k), generator=gen, dtype=torch.int8)
        s = torch.rand(n, groups, generator=gen).half() * 0.02
        z = torch.randint(-5, 5, (n, groups), generator=gen, dtype=torch.int8) if zp else None
        cols = torch.arange(k) // group if group > 0 else torch.zeros(k, dtype=torch.long)
        w = (q.double() - (z.double()[:, cols] if zp else 0.0)) * s.double()[:, cols]
        got = w8a16.w8_dequantize(q, s, z, group, torch.float16).double()
        worst[(f"w8-dequant-g{group}", str(torch.float16))] = float((got - w).norm() / w.norm())
    for key, error in sorted(worst.items()):
        print(*key, f"{error:.3e}")
    """
)


def test_kernels_under_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    errors = {" ".join(line.split()[:-1]): float(line.split()[-1]) for line in done.stdout.splitlines()}
    assert len(errors) == 16, done.stdout
    for key, error in errors.items():
        # fp32 runs IEEE fp32 arithmetic; fp16 rounds the output and p (2^-11 relative each).
        bound = 2e-3 if "float16" in key else 1e-5
        assert error < bound, f"{key}: relative error {error:.2e}"
