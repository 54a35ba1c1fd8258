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
