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


KV_WRITE_SCRIPT = textwrap.dedent(
    """
    import torch
    import triton
    import triton.language as tl
    from accel.runtime.kv_ops import KV_FORMATS, kv_cache_write, kv_quantize
    from accel_cuda.kernels import kv_write

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    reference, kv_write.reference = kv_write.reference, no_fallback
    gen = torch.Generator().manual_seed(0)

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

    def special_tokens(k):
        # Token 0: zeros with a -0.0; 1: constant; 2: tiny (int4's fp16 scale subnormal); 3: large. Rest random.
        t = k.shape[2]
        if t > 0:
            k[:, :, 0] = 0.0
            k[:, :, 0, 1] = -0.0
        if t > 1:
            k[:, :, 1] = 0.75
        if t > 2:
            k[:, :, 2] *= 1e-4
        if t > 3:
            k[:, :, 3] *= 300.0
        return k

    cases = 0
    # (b, rows, h, t, d, cap, block_t): odd head_dims (96: 3 int4 groups), several token blocks with a partial one.
    shapes = [(3, 4, 2, 1, 96, 40, None), (2, 2, 3, 5, 64, 9, None), (1, 2, 1, 37, 128, 64, None),
              (2, 3, 2, 6, 32, 11, 4), (2, 2, 2, 3, 48, 7, None)]
    for fmt in KV_FORMATS:
        for b, rows, h, t, d, cap, block_t in shapes:
            if fmt == "int4" and d % 32:
                continue
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                # K/V as the model makes them: [B, T, H, D] in memory, viewed [B, H, T, D].
                k, v = (special_tokens(torch.randn(b, t, h, d, generator=gen).transpose(1, 2) * 3).to(dtype)
                        for _ in range(2))
                positions = torch.stack([torch.randperm(cap, generator=gen)[:t] for _ in range(b)])
                positions = positions.to(torch.int32 if cases % 2 else torch.int64)
                stores = poisoned(rows, h, cap, d, fmt, dtype)
                expected = [None if s is None else s.clone() for s in stores]
                reference(k, v, positions, *expected, fmt)
                config = None if block_t is None else kv_write.WriteConfig(block_t=block_t, num_warps=1)
                kv_write.kv_cache_write(k, v, positions, *stores, fmt, config=config)
                assert same_bytes(stores, expected), (fmt, b, t, d, dtype)
                cases += 1
    # A prompt write (positions an expanded range, stride 0 across rows) into the first rows of a larger store.
    for fmt in KV_FORMATS:
        k, v = (torch.randn(2, 2, 9, 64, generator=gen).to(torch.bfloat16) for _ in range(2))
        positions = torch.arange(9).expand(2, 9)
        stores = poisoned(3, 2, 12, 64, fmt, torch.bfloat16)
        expected = [None if s is None else s.clone() for s in stores]
        reference(k, v, positions, *expected, fmt)
        kv_write.kv_cache_write(k, v, positions, *stores, fmt)
        assert same_bytes(stores, expected), ("prompt", fmt)
        cases += 1
    # Positions outside [0, S) are skipped: the other tokens land as the reference stores them.
    k, v = (torch.randn(1, 2, 4, 64, generator=gen) for _ in range(2))
    stores = poisoned(1, 2, 8, 64, "int8", torch.float32)
    expected = [None if s is None else s.clone() for s in stores]
    reference(k[:, :, 1:3], v[:, :, 1:3], torch.tensor([[2, 5]]), *expected, "int8")
    kv_write.kv_cache_write(k, v, torch.tensor([[-1, 2, 5, 8]]), *stores, "int8")
    assert same_bytes(stores, expected), "out-of-range positions"

    # The e4m3 conversion against torch's on every bf16 value in range, e4m3 midpoints (ties) and their neighbours,
    # and random fp32 values over the whole range.
    @triton.jit
    def fp8_bits_kernel(y_ptr, out_ptr, N, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        y = tl.load(y_ptr + offs, mask=offs < N, other=0.0)
        tl.store(out_ptr + offs, kv_write._fp8_bits(y).to(tl.uint8), mask=offs < N)

    bf16 = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    e4m3 = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.float8_e4m3fn).float()
    e4m3 = e4m3[e4m3.isfinite()].unique()
    mid = (e4m3[1:] + e4m3[:-1]) / 2
    ties = torch.cat([mid, torch.nextafter(mid, torch.full_like(mid, 1e9)), torch.nextafter(mid, -mid.abs() - 1)])
    noise = torch.randn(200_000, generator=gen) * torch.exp2(torch.randint(-14, 9, (200_000,), generator=gen).float())
    values = torch.cat([bf16, ties, noise, -ties])
    values = values[values.isfinite() & (values.abs() <= 448)].contiguous()
    out = torch.empty(values.shape, dtype=torch.uint8)
    fp8_bits_kernel[(triton.cdiv(values.numel(), 4096),)](values, out, values.numel(), BLOCK=4096)
    want = values.to(torch.float8_e4m3fn).view(torch.uint8)
    wrong = (out != want).nonzero().flatten()
    assert wrong.numel() == 0, [(float(values[i]), int(out[i]), int(want[i])) for i in wrong[:5]]
    print("cases", cases, "fp8 values", values.numel())
    """
)


def test_kv_write_under_the_interpreter_is_exact():
    """The fused KV write stores the reference's bytes exactly: every format, fp32 / bf16 / fp16 K and V laid out as
    the model makes them, odd head_dims and token blocks, poisoned stores whose untouched bytes must survive."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", KV_WRITE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 61 " in done.stdout, done.stdout


RMS_NORM_SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.norm_ops import rms_norm
    from accel_cuda.kernels import norm as kernel

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    kernel.reference = no_fallback
    gen = torch.Generator().manual_seed(0)
    BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

    def ulps(got, want):
        # Representable values between got and want (same signs: x * rsqrt keeps x's sign).
        bits = BITS[got.dtype]
        return (got.view(bits).long() - want.view(bits).long()).abs()

    def make(shape, dtype, weight_dtype, ones):
        rows = torch.logspace(-3, 3, torch.Size(shape[:-1]).numel()).reshape(*shape[:-1], 1)
        x = (torch.randn(*shape, generator=gen) * rows).to(dtype)
        weight = torch.ones(shape[-1]) if ones else 1.0 + 0.5 * torch.randn(shape[-1], generator=gen)
        return x, weight.to(weight_dtype)

    cases, worst_fp32, differing, total = 0, 0.0, 0, 0
    # (shape, config): odd hiddens, a decode row, leading dims, Llama's 4096, the largest row; several rows per
    # program with a partial last block.
    shapes = [((1, 576), None), ((3, 200), None), ((17, 1000), None), ((2, 3, 576), None), ((4, 4096), None),
              ((2, 16384), None), ((17, 200), kernel.NormConfig(block_m=4, num_warps=2)),
              ((3, 96), kernel.NormConfig(block_m=8, num_warps=1))]
    for shape, config in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for weight_dtype, ones in ((dtype, True), (dtype, False), (torch.float32, False)):
                x, weight = make(shape, dtype, weight_dtype, ones)
                got = kernel.rms_norm(x, weight, 1e-5, config=config)
                want = rms_norm(x, weight, 1e-5)
                assert got.dtype == want.dtype and got.shape == want.shape, (shape, dtype, weight_dtype)
                where = (shape, str(dtype), str(weight_dtype), ones)
                if want.dtype == torch.float32 and dtype == torch.float32:
                    rel = float(((got - want).abs() / want.abs().clamp_min(1e-30)).max())
                    worst_fp32 = max(worst_fp32, rel)
                    assert rel < 1e-6, (where, rel)  # the sum of squares in another order, one rsqrt
                elif ones:
                    # w = 1: the output is the normalized row in x's dtype. fp16 rounds to nearest as torch does;
                    # the interpreter truncates fp32 -> bf16 (a GPU rounds to nearest), both within one ulp.
                    d = ulps(got, want)
                    assert int(d.max()) <= 1, (where, int(d.max()))
                    if dtype == torch.float16:
                        differing, total = differing + int((d > 0).sum()), total + d.numel()
                else:
                    # Times the weight: the normalized value and the product each one ulp of a 16-bit dtype away at
                    # most, 2^-7 (bf16) or 2^-10 (fp16) relative each (an fp32 output rounds the product only once).
                    bound = 2 * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10)
                    rel = float(((got.float() - want.float()).abs() / want.float().abs().clamp_min(1e-30)).max())
                    assert rel <= bound, (where, rel)
                cases += 1
    assert differing <= 1e-3 * total, (differing, total)  # fp16: rare elements one ulp away
    # Layouts the kernel takes as they are: rows at a stride past H (a slice), rows expanded (stride 0), a strided
    # weight, size-1 leading dimensions with arbitrary strides.
    base = torch.randn(6, 256, generator=gen).half()
    w = torch.randn(400, generator=gen).half()
    views = [(base[:, :200], w[::2]), (torch.randn(1, 300, generator=gen).expand(4, 300), torch.ones(300)),
             (torch.randn(3, 1, 64, generator=gen).transpose(0, 1), torch.ones(64))]
    for x, weight in views:
        got, want = kernel.rms_norm(x, weight, 1e-6), rms_norm(x, weight, 1e-6)
        torch.testing.assert_close(got, want, rtol=2.0**-10, atol=0)
        cases += 1
    # Layouts it does not take run the reference, exactly.
    kernel.reference = rms_norm
    odd = [(torch.randn(64, 5, generator=gen).T, torch.ones(64)),  # last dimension strided
           (torch.randn(4, 3, 32, generator=gen).transpose(0, 1), torch.ones(32)),  # rows do not collapse
           (torch.randn(2, 16, generator=gen).double(), torch.ones(16).double()),  # float64
           (torch.randn(1, kernel.MAX_HIDDEN + 8, generator=gen), torch.ones(kernel.MAX_HIDDEN + 8)),
           (torch.randn(0, 16), torch.ones(16))]
    for x, weight in odd:
        assert torch.equal(kernel.rms_norm(x, weight, 1e-5), rms_norm(x, weight, 1e-5))
        cases += 1
    print("cases", cases, "worst fp32", f"{worst_fp32:.2e}", "fp16 differing", differing, "of", total)
    """
)


def test_rms_norm_under_the_interpreter():
    """The fused RMSNorm against the reference: fp32 within 1e-6 relative per element; fp16 / bf16 within one ulp of
    x's dtype, rarely off at all in fp16; odd hiddens, rows per program, strided layouts; the reference elsewhere."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", RMS_NORM_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 80 " in done.stdout, done.stdout


ROPE_SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.rope_ops import rotary_embedding
    from accel_cuda.kernels import rope as kernel

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    kernel.reference, kernel.POISON = no_fallback, True
    gen = torch.Generator().manual_seed(0)

    def trunc(v):
        # float32 -> bf16 as the interpreter casts: truncated to the upper 16 bits (a GPU rounds to nearest even).
        return (v.view(torch.int32) & -65536).view(torch.float32)

    def parts(x, cos, sin):
        # x * cos and rotate_half(x) * sin in float32 (each exact for 16-bit inputs), tables [B|1, T, 1, D].
        x, cos, sin = x.float(), cos.float().unsqueeze(2), sin.float().unsqueeze(2)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos, torch.cat((-x2, x1), dim=-1) * sin

    def fused_qkv(b, t, h, hkv, d, dtype, transposed):
        # q and k as the model makes them, strided views of one qkv projection; or [B, H, T, D] memory, transposed.
        if transposed:
            return (torch.randn(b, heads, t, d, generator=gen).mul(3).to(dtype).transpose(1, 2) for heads in (h, hkv))
        qkv = (torch.randn(b, t, (h + 2 * hkv) * d, generator=gen) * 3).to(dtype)
        q, k, _ = qkv.split((h * d, hkv * d, hkv * d), dim=-1)
        return q.view(b, t, h, d), k.view(b, t, hkv, d)

    def tables(b, t, d, table_batch, dtype, how):
        # "angles": cos / sin of RoPE angles (each frequency in both halves) at per-row positions; "random": independent
        # values everywhere (a kernel mixing up the tables' halves shows); "expand": [1, T, D] expanded to B (stride 0);
        # "mixed": cos of batch 1, sin of batch B.
        if how == "random":
            return [torch.randn(table_batch, t, d, generator=gen).to(dtype) for _ in range(2)]
        positions = torch.randint(0, 8000, (table_batch, 1), generator=gen) + torch.arange(t)
        half = positions[..., None].float() * 500000.0 ** -(torch.arange(0, d, 2).float() / d)
        angle = torch.cat((half, half), dim=-1)
        cos, sin = angle.cos().to(dtype), angle.sin().to(dtype)
        if how == "expand":
            cos, sin = cos[:1].expand(b, t, d), sin[:1].expand(b, t, d)
        elif how == "mixed":
            cos = cos[:1]
        return cos, sin

    cases, differing_bf16, total_bf16 = 0, 0, 0
    # (b, t, h, hkv, d, table batch, tables, config): Llama-3-8B decode; odd head counts (5 over 1); a prefill with one
    # table; head_dim 96 (masked half) with partial head blocks; the largest head_dim; head_dim 2; many head blocks.
    shapes = [(1, 1, 32, 8, 128, 1, "angles", None), (4, 1, 5, 1, 64, 4, "angles", None),
              (2, 7, 5, 1, 128, 1, "angles", None), (3, 2, 6, 2, 96, 3, "random", kernel.RopeConfig(4, 1)),
              (1, 3, 3, 3, 256, 1, "random", None), (2, 2, 1, 1, 2, 2, "random", None),
              (2, 3, 9, 3, 64, 2, "expand", kernel.RopeConfig(2, 1)), (3, 4, 4, 2, 64, 3, "mixed", None)]
    for b, t, h, hkv, d, table_batch, how, config in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for transposed in (False, True):
                q, k = fused_qkv(b, t, h, hkv, d, dtype, transposed)
                cos, sin = tables(b, t, d, table_batch, dtype, how)
                got = kernel.rotary_embedding(q, k, cos, sin, config=config)
                want = rotary_embedding(q, k, cos, sin)
                where = (b, t, h, hkv, d, how, str(dtype), transposed)
                for x, g, w in zip((q, k), got, want):
                    assert g.dtype == dtype and g.shape == x.shape and g.is_contiguous(), where
                    if dtype != torch.bfloat16:  # fp32 and fp16 (numpy rounds to nearest even) are torch's bits
                        assert torch.equal(g, w), (where, float((g.float() - w.float()).abs().max()))
                        continue
                    # bf16: exactly the kernel's arithmetic with the interpreter's truncating casts, and within a bf16
                    # ulp (2^-7 relative at most) of each product and of the sum of torch's.
                    p1, p2 = parts(x, cos, sin)
                    assert torch.equal(g, trunc(trunc(p1) + trunc(p2)).to(dtype)), where
                    slack = 2.0**-6 * (p1.abs() + p2.abs() + w.float().abs())
                    assert bool(((g.float() - w.float()).abs() <= slack).all()), where
                    differing_bf16, total_bf16 = differing_bf16 + int((g != w).sum()), total_bf16 + g.numel()
                cases += 1
    # Zeros keep torch's signs (torch.equal calls -0.0 and +0.0 equal; the bits do not): halves of +0.0 and -0.0
    # against tables of both signs, so each output is a sum of two signed zeros.
    zero = torch.tensor([0.0, -0.0]).repeat(8)
    q0 = torch.stack([zero, zero.roll(1)], dim=-1).reshape(1, 1, 4, 8)  # [B, T, H, D], halves of every sign pair
    cos0 = torch.tensor([1.0, -1.0, 2.0, -0.5] * 2).reshape(1, 1, 8)
    sin0 = torch.tensor([-1.0, 1.0, 0.5, -2.0] * 2).reshape(1, 1, 8)
    k0 = q0[:, :, :2]
    for g, w in zip(kernel.rotary_embedding(q0, k0, cos0, sin0), rotary_embedding(q0, k0, cos0, sin0)):
        assert torch.equal(g.view(torch.int32), w.view(torch.int32)), (g, w)
    # Layouts it does not take run the reference, exactly: a strided last dimension, float64, head_dim past the maximum.
    kernel.reference = rotary_embedding
    q, k = fused_qkv(2, 3, 4, 2, 16, torch.float32, False)
    cos, sin = tables(2, 3, 16, 1, torch.float32, "random")
    wide_q, wide_k = fused_qkv(1, 2, 2, 1, kernel.MAX_HEAD_DIM + 2, torch.float16, False)
    wide_cos, wide_sin = tables(1, 2, kernel.MAX_HEAD_DIM + 2, 1, torch.float16, "random")
    odd = [(q, k, torch.randn(1, 16, 3, generator=gen).transpose(1, 2), sin),
           (q.double(), k.double(), cos.double(), sin.double()), (wide_q, wide_k, wide_cos, wide_sin),
           (q[:0], k[:0], cos, sin)]
    for args in odd:
        for g, w in zip(kernel.rotary_embedding(*args), rotary_embedding(*args)):
            assert torch.equal(g, w)
        cases += 1
    print("cases", cases, "bf16 differing", differing_bf16, "of", total_bf16)
    """
)


def test_rotary_embedding_under_the_interpreter():
    """The fused RoPE against the reference: fp32 and fp16 bit for bit; bf16 bit for bit with the interpreter's
    truncating casts and within a bf16 ulp of torch's products and sum; q / k as strided views of a fused qkv or of
    [B, H, T, D] memory, odd head counts, partial head blocks, tables of batch 1, B, expanded or mixed, poisoned
    outputs; the reference for layouts it does not take."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", ROPE_SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 52 " in done.stdout, done.stdout


ADD_RMS_NORM_SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.norm_ops import add_rms_norm, rms_norm
    from accel_cuda.kernels import norm as kernel

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    kernel.add_reference = no_fallback
    gen = torch.Generator().manual_seed(0)
    BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

    def ulps(got, want):
        bits = BITS[got.dtype]
        return (got.view(bits).long() - want.view(bits).long()).abs()

    def truncated_bf16(y):
        # The interpreter's float32 -> bf16: the top 16 bits (a GPU rounds to nearest, as torch does).
        return (y.view(torch.int32) >> 16).to(torch.int16).view(torch.bfloat16)

    def make(shape, dtype, weight_dtype, ones):
        n = torch.Size(shape[:-1]).numel()
        x = (torch.randn(*shape, generator=gen) * torch.logspace(-3, 3, n).reshape(*shape[:-1], 1)).to(dtype)
        residual = (torch.randn(*shape, generator=gen) * torch.logspace(3, -3, n).reshape(*shape[:-1], 1)).to(dtype)
        weight = torch.ones(shape[-1]) if ones else 1.0 + 0.5 * torch.randn(shape[-1], generator=gen)
        return x, residual, weight.to(weight_dtype)

    def check_h(x, residual, h, where):
        # h = x + residual in float32, rounded once to x's dtype: torch's bits (fp32, fp16); in bf16 the
        # interpreter's truncation of the same float32 sum.
        total = x.float() + residual.float()
        want = truncated_bf16(total) if x.dtype == torch.bfloat16 else total.to(x.dtype)
        assert h.dtype == x.dtype and torch.equal(h, want), where
        if x.dtype != torch.bfloat16:
            assert torch.equal(h, x + residual), where

    cases, differing, total = 0, 0, 0
    shapes = [((1, 576), None), ((3, 200), None), ((17, 1000), None), ((2, 3, 576), None), ((4, 4096), None),
              ((2, 16384), None), ((17, 200), kernel.NormConfig(block_m=4, num_warps=2)),
              ((3, 96), kernel.NormConfig(block_m=8, num_warps=1))]
    for shape, config in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for weight_dtype, ones in ((dtype, True), (dtype, False), (torch.float32, False)):
                x, residual, weight = make(shape, dtype, weight_dtype, ones)
                normed, h = kernel.add_rms_norm(x, residual, weight, 1e-5, config=config)
                where = (shape, str(dtype), str(weight_dtype), ones)
                check_h(x, residual, h, where)
                # normed: rms_norm of the kernel's h, within rms_norm's bounds (tests/test_cuda_rms_norm.py).
                want = rms_norm(h, weight, 1e-5)
                assert normed.dtype == want.dtype and normed.shape == want.shape, where
                if want.dtype == torch.float32 and dtype == torch.float32:
                    rel = float(((normed - want).abs() / want.abs().clamp_min(1e-30)).max())
                    assert rel < 1e-6, (where, rel)
                elif ones:
                    d = ulps(normed, want)
                    assert int(d.max()) <= 1, (where, int(d.max()))
                    if dtype == torch.float16:
                        differing, total = differing + int((d > 0).sum()), total + d.numel()
                else:
                    bound = 2 * (2.0**-7 if dtype == torch.bfloat16 else 2.0**-10)
                    rel = float(((normed.float() - want.float()).abs() / want.float().abs().clamp_min(1e-30)).max())
                    assert rel <= bound, (where, rel)
                cases += 1
    assert differing <= 1e-3 * total, (differing, total)
    # Layouts taken as they are: x rows at a stride past H with residual rows expanded (stride 0), a strided weight;
    # size-1 leading dimensions of any stride; x and residual as two column halves of one tensor.
    base = torch.randn(6, 256, generator=gen).half()
    w = torch.randn(400, generator=gen).half()
    both = torch.randn(5, 2, 64, generator=gen)
    views = [(base[:, :200], torch.randn(1, 200, generator=gen).half().expand(6, 200), w[::2]),
             (torch.randn(3, 1, 64, generator=gen).transpose(0, 1), torch.randn(1, 3, 64, generator=gen),
              torch.ones(64)),
             (both[:, 0], both[:, 1], torch.ones(64))]
    for x, residual, weight in views:
        normed, h = kernel.add_rms_norm(x, residual, weight, 1e-6)
        check_h(x, residual, h, "views")
        torch.testing.assert_close(normed, rms_norm(h, weight, 1e-6), rtol=2.0**-10, atol=0)
        cases += 1
    # Layouts it does not take run the reference, exactly.
    kernel.add_reference = add_rms_norm
    rows = torch.randn(4, 3, 32, generator=gen)
    odd = [(torch.randn(64, 5, generator=gen).T, torch.randn(5, 64, generator=gen), torch.ones(64)),
           (torch.randn(5, 64, generator=gen), torch.randn(64, 5, generator=gen).T, torch.ones(64)),
           (torch.randn(3, 4, 32, generator=gen), rows.transpose(0, 1), torch.ones(32)),
           (torch.randn(2, 16, generator=gen).double(), torch.randn(2, 16, generator=gen).double(), torch.ones(16)),
           (torch.randn(1, kernel.MAX_HIDDEN + 8), torch.randn(1, kernel.MAX_HIDDEN + 8),
            torch.ones(kernel.MAX_HIDDEN + 8)),
           (torch.randn(0, 16), torch.randn(0, 16), torch.ones(16))]
    for x, residual, weight in odd:
        got, want = kernel.add_rms_norm(x, residual, weight, 1e-5), add_rms_norm(x, residual, weight, 1e-5)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
        cases += 1
    print("cases", cases, "fp16 differing", differing, "of", total)
    """
)


def test_add_rms_norm_under_the_interpreter():
    """The residual add fused into RMSNorm: h bit for bit (torch's in fp32 / fp16, the interpreter's truncated
    float32 sum in bf16), the normalized h within rms_norm's bounds; strided and expanded rows; the reference for
    layouts it does not take."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", ADD_RMS_NORM_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 81 " in done.stdout, done.stdout


SILU_AND_MUL_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import torch
    from accel.runtime.act_ops import silu_and_mul
    from accel_cuda.kernels import act as kernel

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    kernel.reference = no_fallback
    gen = torch.Generator().manual_seed(0)
    BITS = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}

    def ulps(got, want):
        # Representable values between got and want, counted across zero (silu(g) * up may take either sign).
        bits = BITS[got.dtype]
        a, b = got.view(bits).long(), want.view(bits).long()
        top = 1 << (8 * got.element_size() - 1)
        a, b = torch.where(a < 0, -(a + top), a), torch.where(b < 0, -(b + top), b)
        return (a - b).abs()

    def to_dtype(y, dtype):
        # float32 numpy -> x's dtype as the interpreter casts: fp16 to nearest, bf16 truncated (the top 16 bits).
        t = torch.from_numpy(y)
        if dtype == torch.bfloat16:
            return (t.view(torch.int32) >> 16).to(torch.int16).view(torch.bfloat16)
        return t.to(dtype)

    def model(x):
        # The kernel's arithmetic in numpy float32, as the interpreter runs it: g / (1 + exp(-g)), to x's dtype,
        # times up in float32, to x's dtype.
        inter = x.shape[-1] // 2
        g, up = (part.float().contiguous().numpy() for part in x.split(inter, -1))
        with np.errstate(over="ignore"):
            silu = np.divide(g, np.float32(1.0) + np.exp(-g))
        silu = to_dtype(silu, x.dtype).float().numpy()
        return to_dtype(silu * up, x.dtype)

    def make(shape, dtype):
        *lead, two_i = shape
        n = torch.Size(lead).numel()
        gate = 3.0 * torch.randn(*lead, two_i // 2, generator=gen)
        gate.view(-1)[::7] *= 5.0  # silu's tails: exp(-g) overflows below g ~ -88
        up = torch.randn(*lead, two_i // 2, generator=gen) * torch.logspace(-1, 1, n).reshape(*lead, 1)
        return torch.cat([gate, up], -1).to(dtype)

    cases, worst_fp32, differing, total = 0, 0.0, {}, {}
    # x shapes [..., 2I]: a decode row of I = 1536, odd I (37: the up half off every vector boundary), leading dims,
    # Llama-3-8B's I = 14336 (14 column blocks), partial last blocks, small blocks by config.
    shapes = [((1, 3072), None), ((3, 400), None), ((5, 74), None), ((2, 3, 1152), None), ((2, 28672), None),
              ((17, 2000), None), ((4, 400), kernel.ActConfig(block=64, num_warps=1)),
              ((3, 2 * 1000), kernel.ActConfig(block=256, num_warps=2))]
    for shape, config in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = make(shape, dtype)
            got = kernel.silu_and_mul(x, config=config)
            want = silu_and_mul(x)
            where = (shape, str(dtype))
            assert got.dtype == want.dtype == dtype and got.shape == want.shape, where
            assert torch.equal(got, model(x)), where  # indexing, masking and arithmetic exactly as modelled
            d = ulps(got, want)
            if dtype == torch.float32:
                # numpy's exp against torch's CPU exp: a few float32 ulps.
                rel = float(((got - want).abs() / want.abs().clamp_min(1e-30)).max())
                worst_fp32 = max(worst_fp32, rel)
                assert rel < 1e-6, (where, rel)
            else:
                # fp16: the product one ulp off where silu rounded the other way (rare), rarely two. bf16: silu and
                # the product each truncated instead of rounded: within one ulp each.
                assert int(d.max()) <= (2 if dtype == torch.float16 else 3), (where, int(d.max()))
            key = str(dtype)
            differing[key] = differing.get(key, 0) + int((d > 0).sum())
            total[key] = total.get(key, 0) + d.numel()
            cases += 1
    assert differing["torch.float16"] <= 1e-3 * total["torch.float16"], (differing, total)
    # Layouts taken as they are: rows at a stride past 2I (a slice of a wider tensor), rows expanded (stride 0),
    # size-1 leading dimensions of any stride.
    wide = make((6, 600), torch.float32)
    views = [wide[:, 100:500], make((1, 200), torch.float32).expand(4, 200),
             make((3, 1, 128), torch.float32).transpose(0, 1)]
    for x in views:
        assert torch.equal(kernel.silu_and_mul(x), model(x))
        torch.testing.assert_close(kernel.silu_and_mul(x), silu_and_mul(x), rtol=1e-6, atol=0)
        cases += 1
    # Layouts it does not take run the reference, exactly.
    kernel.reference = silu_and_mul
    odd = [make((64, 6), torch.float32).T, make((4, 3, 32), torch.float32).transpose(0, 1),
           make((2, 16), torch.float64), make((0, 16), torch.float32)]
    for x in odd:
        assert torch.equal(kernel.silu_and_mul(x), silu_and_mul(x))
        cases += 1
    print("cases", cases, "worst fp32", f"{worst_fp32:.2e}", "differing", differing, "of", total)
    """
)


def test_silu_and_mul_under_the_interpreter():
    """SwiGLU's silu(gate) * up: exactly the kernel's float32 arithmetic as modelled in numpy (every dtype, odd and
    Llama-sized I, partial blocks, strided rows); against torch's reference within a few float32 ulps, two fp16 ulps
    (rarely any), and three bf16 ulps (the interpreter truncates); the reference for layouts it does not take."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", SILU_AND_MUL_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 31 " in done.stdout, done.stdout


FUSED_QUANT_SCRIPT = textwrap.dedent(
    """
    import torch
    from accel.runtime.fused_quant_ops import add_rms_norm_quant, rms_norm_quant, silu_and_mul_quant
    from accel.runtime.ops import w8a8_scaled_mm
    from accel_cuda.kernels import act, norm, w8a8

    def no_fallback(*args):
        raise AssertionError("the Triton kernel fell back to the reference")

    norm.quant_reference = norm.add_quant_reference = act.quant_reference = no_fallback
    w8a8.POISON = True
    gen = torch.Generator().manual_seed(0)

    def same(a, b):
        if a.dtype != b.dtype or a.shape != b.shape:
            return False
        return torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.dtype.itemsize == 1 else torch.equal(a, b)

    def unfused(y, fp8):
        # The unfused kernel pipeline's quantization: w8a8.quantize_rows on the stored y, shaped as the op returns.
        codes, scale = w8a8.quantize_rows(y.reshape(-1, y.shape[-1]), fp8)
        return codes.reshape(y.shape), scale.reshape(*y.shape[:-1], 1)

    worst = {}

    def against_reference(key, got, want):
        # int8 codes in steps and scales relative: the norm's / SwiGLU's y differs from torch's as the unfused kernels'
        # tests bound it (fp32 ~1e-6 relative; fp16 rarely one ulp; bf16 truncated by the interpreter: one ulp).
        (codes, scale), (want_codes, want_scale) = got[:2], want[:2]
        steps = int((codes.int() - want_codes.int()).abs().max())
        rel = float((scale.double() / want_scale.double() - 1).abs().max())
        old = worst.get(key, (0, 0.0))
        worst[key] = (max(old[0], steps), max(old[1], rel))

    def make(shape, dtype, weight_dtype, zero_row):
        n = torch.Size(shape[:-1]).numel()
        rows = torch.logspace(-3, 3, n).reshape(*shape[:-1], 1)
        x = (torch.randn(*shape, generator=gen) * rows).to(dtype)
        residual = (torch.randn(*shape, generator=gen) * rows.flip(0)).to(dtype)
        if zero_row:
            x.view(-1, shape[-1])[0] = 0
            residual.view(-1, shape[-1])[0] = 0
        weight = (1.0 + 0.5 * torch.randn(shape[-1], generator=gen)).to(weight_dtype)
        return x, residual, weight

    cases = 0
    # Norms: odd hiddens, a decode row, leading dims, Llama's 4096, the largest row, several rows per program with a
    # partial last block; weights of x's dtype and float32 (y in float32); int8 and e4m3; an all-zero row.
    shapes = [((1, 576), None), ((3, 200), None), ((2, 3, 576), None), ((4, 4096), None), ((2, 16384), None),
              ((17, 200), norm.NormConfig(block_m=4, num_warps=2))]
    for shape, config in shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for weight_dtype in (dtype, torch.float32):
                for fp8 in (False, True):
                    x, residual, weight = make(shape, dtype, weight_dtype, zero_row=shape[0] > 2)
                    got = norm.rms_norm_quant(x, weight, 1e-5, fp8, config=config)
                    assert got[0].dtype == (torch.float8_e4m3fn if fp8 else torch.int8)
                    want = unfused(norm.rms_norm(x, weight, 1e-5, config=config), fp8)
                    assert same(got[0], want[0]) and same(got[1], want[1]), (shape, dtype, weight_dtype, fp8)
                    if not fp8:
                        against_reference(("norm", str(dtype)), got, rms_norm_quant(x, weight, 1e-5, fp8))
                    codes, scale, h = norm.add_rms_norm_quant(x, residual, weight, 1e-5, fp8, config=config)
                    normed, want_h = norm.add_rms_norm(x, residual, weight, 1e-5, config=config)
                    want = unfused(normed, fp8)
                    assert same(h, want_h) and same(codes, want[0]) and same(scale, want[1]), (shape, dtype, fp8)
                    if not fp8:
                        ref = add_rms_norm_quant(x, residual, weight, 1e-5, fp8)
                        against_reference(("add-norm", str(dtype)), (codes, scale), ref)
                        if dtype != torch.bfloat16:
                            assert torch.equal(h, ref[2])
                    cases += 1
    # SwiGLU: a decode row, odd I (the up half off every vector boundary), leading dims, Llama-3-8B's I = 14336 (one
    # 16-warp program a row), I past the one-pass limit (silu_and_mul then quantize_rows), a smaller block by config.
    silu_shapes = [((1, 3072), None), ((3, 400), None), ((5, 74), None), ((2, 3, 1152), None), ((2, 28672), None),
                   ((2, 2 * 16400), None), ((4, 400), act.ActConfig(block=512, num_warps=2))]
    for shape, config in silu_shapes:
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for fp8 in (False, True):
                *lead, two_i = shape
                n = torch.Size(lead).numel()
                gate = 3.0 * torch.randn(*lead, two_i // 2, generator=gen)
                up = torch.randn(*lead, two_i // 2, generator=gen) * torch.logspace(-1, 1, n).reshape(*lead, 1)
                x = torch.cat([gate, up], -1).to(dtype)
                x.view(-1, two_i)[-1] = 0
                got = act.silu_and_mul_quant(x, fp8, config=config)
                want = unfused(act.silu_and_mul(x), fp8)
                assert same(got[0], want[0]) and same(got[1], want[1]), (shape, dtype, fp8)
                if not fp8:
                    against_reference(("silu", str(dtype)), got, silu_and_mul_quant(x, fp8))
                cases += 1
    # w8a8_scaled_mm on quantize_rows' codes: the linear ops' result bit for bit on the same path (Triton GEMM, split-K
    # or not), leading dims, x_scale [..., 1], [...] and [1] (a static scale); int8 with one split also the reference's.
    for m, n, k, split in [(5, 40, 200, 1), (3, 24, 256, 3), (1, 32, 128, 1)]:
        for fp8 in (False, True):
            for dtype in (torch.float32, torch.float16):
                x = (torch.randn(m, k, generator=gen) * torch.logspace(-2, 2, m)[:, None]).to(dtype)
                if fp8:
                    q = (torch.randn(n, k, generator=gen) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
                else:
                    q = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
                scale, bias = torch.rand(n, 1, generator=gen) * 1e-2, torch.randn(n, generator=gen).to(dtype)
                config = w8a8.W8Config(block_m=16, block_n=16, block_k=64, split=split)
                linear = w8a8.fp8_linear if fp8 else w8a8.w8a8_int8_linear
                codes, sx = w8a8.quantize_rows(x, fp8)
                for b in (bias, None):
                    want = linear(x, q, scale, None, b, config=config) if fp8 else linear(x, q, scale, b, config=config)
                    got = w8a8.w8a8_scaled_mm(codes, sx[:, None], q, scale, b, dtype, config=config)
                    assert same(got, want), (m, n, k, split, fp8, dtype)
                    if not fp8 and split == 1:
                        assert same(got, w8a8_scaled_mm(codes, sx[:, None], q, scale, b, dtype))
                    lead = (m, 1)
                    got = w8a8.w8a8_scaled_mm(codes.reshape(*lead, k), sx.reshape(lead), q, scale, b, dtype,
                                              config=config)
                    assert same(got, want.reshape(*lead, n))
                    cases += 1
                if fp8:
                    static = (x.float().abs().amax() / 448 * 1.25).reshape(1)
                    codes, sx = w8a8.quantize_rows(x, fp8, static)
                    got = w8a8.w8a8_scaled_mm(codes, static, q, scale, bias, dtype, config=config)
                    assert same(got, w8a8.fp8_linear(x, q, scale, static, bias, config=config))
                    cases += 1
    no_rows, w = torch.zeros(0, 64, dtype=torch.int8), torch.zeros(8, 64, dtype=torch.int8)
    empty = w8a8.w8a8_scaled_mm(no_rows, torch.ones(0, 1), w, torch.ones(8), None, torch.float16)
    assert empty.shape == (0, 8) and empty.dtype == torch.float16
    # Layouts and inputs the kernels do not take run the references, exactly.
    norm.quant_reference, norm.add_quant_reference = rms_norm_quant, add_rms_norm_quant
    act.quant_reference = silu_and_mul_quant

    def all_same(got, want):
        return all(same(a, b) for a, b in zip(got, want, strict=True))

    strided = torch.randn(64, 5, generator=gen).T
    for fp8 in (False, True):
        for x in (strided, torch.randn(2, 16, generator=gen).double(), torch.randn(0, 16)):
            r = torch.randn(x.shape, generator=gen).to(x.dtype)
            w = torch.ones(x.shape[-1], dtype=x.dtype)
            assert all_same(norm.rms_norm_quant(x, w, 1e-5, fp8), rms_norm_quant(x, w, 1e-5, fp8))
            assert all_same(norm.add_rms_norm_quant(x, r, w, 1e-5, fp8), add_rms_norm_quant(x, r, w, 1e-5, fp8))
            assert all_same(act.silu_and_mul_quant(x, fp8), silu_and_mul_quant(x, fp8))
            cases += 1
    for key, (steps, rel) in sorted(worst.items()):
        print(*key, steps, f"{rel:.3e}")
    print("cases", cases)
    """
)


def test_fused_quant_under_the_interpreter():
    """rms_norm_quant, add_rms_norm_quant and silu_and_mul_quant give bit for bit the codes and scales of the unfused
    kernels (the norm / SwiGLU kernel, then w8a8.quantize_rows) in every dtype, int8 and e4m3 (the interpreter's e4m3
    conversion is not a GPU's, but the same in both), and h exactly; w8a8_scaled_mm on quantize_rows' codes is the
    linear ops' result bit for bit. Against the references (int8 only): fp32 and fp16 within one code and 2^-10
    relative in the scale; bf16, which the interpreter truncates twice (normed, then the product), within two codes
    and 2^-6. The references for layouts the kernels do not take."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, "-c", FUSED_QUANT_SCRIPT], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "cases 150" in done.stdout, done.stdout
    worst = {tuple(line.split()[:2]): line.split()[2:] for line in done.stdout.splitlines() if len(line.split()) == 4}
    assert len(worst) == 9, done.stdout
    bound = {"torch.float32": (1, 1e-6), "torch.float16": (1, 2 * 2.0**-10), "torch.bfloat16": (2, 2 * 2.0**-7)}
    for (op, dtype), (steps, rel) in worst.items():
        assert int(steps) <= bound[dtype][0] and float(rel) <= bound[dtype][1], (op, dtype, steps, rel)


LOOP_BOUND = textwrap.dedent(
    """
    import torch
    import triton
    import triton.language as tl
    from accel_cuda.kernels.interpret import INTERPRET

    @triton.jit
    def count(out, STEPS):
        acc = 0.0
        for i in tl.range(STEPS, num_stages=2):
            acc += 1.0
        tl.store(out, acc)

    out = torch.zeros(1)
    count[(1,)](out, 3)
    print(INTERPRET, float(out))
    """
)


def test_a_runtime_loop_bound_runs_under_the_interpreter():
    """accel_cuda.kernels.interpret: a scalar argument as a loop bound (every TMA kernel's K loop) runs, whatever
    NumPy's rule on int() of a 1-element array."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", LOOP_BOUND], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "3.0"]
