"""W8A8 linear in Triton and cuBLAS: int8 (y = (q_x @ q_w^T) * s_x * s_w + b) and fp8 e4m3 (vLLM's fp8 W8A8).

Two steps per call:

1. `quantize_rows`: one program per token computes s_x = max(max|x|, 1e-12) / qmax (or takes the static scale)
   and writes the codes q_x = clamp(round(x / s_x)) (int8) or fp8(clamp(x / s_x)) (e4m3), activation_quant's
   convention, computed as torch computes it on the same device, so that codes match bit for bit (rowquant.py's
   device functions, which the norm and SwiGLU kernels that quantize their output share).
2. `_scaled_mm`, the product of the codes and the weight, by `W8Config.kernel`:
   - "triton": a tl.dot GEMM on the int8 (int32 accumulator) or e4m3 (fp32 accumulator) codes, both operands
     K-major, with the scales, bias and cast fused into its epilogue; split-K partials (already scaled, fp32)
     are summed by a second small kernel that adds the bias.
   - "cublas": torch._int_mm (int8 -> int32) or torch._scaled_mm (e4m3; unit scales -> fp32), then a Triton
     epilogue kernel applies s_x, s_w and the bias.
   - "scaled_mm": fp8 only, torch._scaled_mm with rowwise scales (s_x [M, 1], s_w [1, N]) and the bias fused in
     cuBLAS/CUTLASS; Hopper and newer with bf16 output.
   - "tma": Hopper, M <= 64: the 8-bit wgmma kernel with TMA-pipelined loads (w8a8_tma.py), swap-AB, split-K
     summed in one launch; the codes go to the tensor cores as stored.

`plan` picks one per shape (KERNEL_NOTES.md has the measurements behind it): on Hopper at decode sizes the TMA
kernel where the shape tiles (w8a8_tma.w8a8_tma_plan), elsewhere the Triton GEMM (the 8-bit weights are half of
bf16's bytes); above M = 64 the libraries. The Triton kernels (quantize_rows, GEMM, epilogue) are launched with
programmatic dependent launch on Hopper (pdl.py).
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.ops import check_w8a8_scaled_mm
from accel.runtime.ops import fp8_linear as fp8_reference
from accel.runtime.ops import w8a8_int8_linear as int8_reference
from accel.runtime.ops import w8a8_scaled_mm as scaled_mm_reference
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.rowquant import ONE_PASS_MAX_K, _codes, _row_scale, code_dtype, fp8_supported, warps_for_row
from accel_cuda.kernels.w8a8_tma import W8TmaConfig, supports_w8a8_tma, w8a8_tma, w8a8_tma_plan

__all__ = ["W8Config", "fp8_linear", "plan", "quantize_rows", "w8a8_int8_linear", "w8a8_scaled_mm"]

POISON = False  # tests: fill outputs and workspaces with NaN first, so unwritten elements show
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
FP8_MAX = 448.0


@triton.jit
def _quantize_rows_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    static_ptr,
    K,
    stride_xm,
    FP8: tl.constexpr,
    STATIC: tl.constexpr,
    RECIP: tl.constexpr,
    BLOCK_K: tl.constexpr,
    ONE_PASS: tl.constexpr,
    PDL: tl.constexpr,
):
    """One program per row. ONE_PASS (BLOCK_K >= K): the row is loaded once and stays in registers between its
    absmax and its codes (one memory round trip; the looped form costs 2 K / BLOCK_K dependent ones: 7.8 us per
    call at K = 14336 against 3.7 at 4096, KERNEL_NOTES.md)."""
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_K)
    pdl_enter(PDL)
    if ONE_PASS:
        mask = offs < K
        x = tl.load(x_ptr + row * stride_xm + offs, mask=mask, other=0.0).to(tl.float32)
        amax = tl.max(tl.abs(x), axis=0)
        scale = tl.load(static_ptr).to(tl.float32) if STATIC else _row_scale(amax, RECIP, FP8)
        codes = _codes(x, scale, FP8)
        pdl_release(PDL)
        tl.store(s_ptr + row, scale)
        tl.store(q_ptr + row * K + offs, codes, mask=mask)
    else:
        if STATIC:
            scale = tl.load(static_ptr).to(tl.float32)
        else:
            amax = tl.zeros((BLOCK_K,), tl.float32)
            for k0 in range(0, K, BLOCK_K):
                x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0).to(tl.float32)
                amax = tl.maximum(amax, tl.abs(x))
            scale = _row_scale(tl.max(amax, axis=0), RECIP, FP8)
        pdl_release(PDL)  # after the absmax pass; the codes' pass follows
        tl.store(s_ptr + row, scale)
        for k0 in range(0, K, BLOCK_K):
            mask = k0 + offs < K
            x = tl.load(x_ptr + row * stride_xm + k0 + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(q_ptr + row * K + k0 + offs, _codes(x, scale, FP8), mask=mask)


@triton.jit(do_not_specialize=["M", "N"])
def _gemm_kernel(
    a_ptr,
    b_ptr,
    sa_ptr,
    sb_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    K,
    k_per_split,
    stride_am,
    stride_bn,
    stride_om,
    stride_os,
    SB_PER_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    FP8: tl.constexpr,
    SPLIT_K: tl.constexpr,
    EVEN_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
    PDL: tl.constexpr,
):
    """out [M, N] (or split partial) = (a [M, K] @ b [N, K]^T) * sa[m] * sb[n] (+ bias), K range of this split."""
    pid = tl.program_id(0)
    pid_s = tl.program_id(1)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row tiles share each column tile while it is in L2.
    group = pid // (GROUP_M * num_n)
    first_m = group * GROUP_M
    rows_in_group = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * num_n)) % rows_in_group
    pid_n = (pid % (GROUP_M * num_n)) // rows_in_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_mask = offs_m < M
    n_mask = offs_n < N
    a_rows = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am
    b_rows = b_ptr + offs_n.to(tl.int64)[:, None] * stride_bn
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    pdl_enter(PDL)
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32 if FP8 else tl.int32)
    for k0 in range(k_start, k_end, BLOCK_K):
        kk = k0 + offs_k
        if EVEN_K:  # every K tile is whole: masks only along rows, so loads stay 16 bytes wide
            a = tl.load(a_rows + kk[None, :], mask=m_mask[:, None], other=0.0)
            b = tl.load(b_rows + kk[None, :], mask=n_mask[:, None], other=0.0)
        else:
            k_mask = kk < k_end
            a = tl.load(a_rows + kk[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            b = tl.load(b_rows + kk[None, :], mask=n_mask[:, None] & k_mask[None, :], other=0.0)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.float32 if FP8 else tl.int32)
    pdl_release(PDL)
    sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
    if SB_PER_N:
        sb = tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
    else:
        sb = tl.load(sb_ptr + offs_n * 0).to(tl.float32)
    y = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    out_mask = m_mask[:, None] & n_mask[None, :]
    if not SPLIT_K:
        if HAS_BIAS:
            y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        out = out_ptr + pid_s * stride_os + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :]
        tl.store(out, y, mask=out_mask)


@triton.jit
def _epilogue_kernel(
    acc_ptr,
    sa_ptr,
    sb_ptr,
    bias_ptr,
    out_ptr,
    M,
    N,
    SPLITS,
    stride_s,
    SCALE: tl.constexpr,
    SB_PER_N: tl.constexpr,
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,
):
    """out = (sum over SPLITS of acc) [* sa[m] * sb[n]] (+ bias), cast to out's dtype; acc fp32 or int32 [.., M, N]."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    mask = m_mask[:, None] & n_mask[None, :]
    idx = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    pdl_enter(PDL)
    y = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for s in range(SPLITS):
        y += tl.load(acc_ptr + s * stride_s + idx, mask=mask, other=0).to(tl.float32)
    pdl_release(PDL)
    if SCALE:
        sa = tl.load(sa_ptr + offs_m, mask=m_mask, other=0.0)
        if SB_PER_N:
            sb = tl.load(sb_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)
        else:
            sb = tl.load(sb_ptr + offs_n * 0).to(tl.float32)
        y = y * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        y += tl.load(bias_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    tl.store(out_ptr + idx, y.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class W8Config:
    """One launch plan: "triton" or "tma" (tile sizes, split-K, warps, stages; "tma" reads block_k as the K per loop
    iteration, 128 or 256: W8TmaConfig.ku), "cublas" or "scaled_mm" (module docstring)."""

    kernel: str = "triton"
    block_m: int = 16
    block_n: int = 64
    block_k: int = 256
    split: int = 1
    group_m: int = 8
    num_warps: int = 4
    num_stages: int = 4


def _library_ok(kernel: str, m: int, n: int, k: int, fp8: bool, cuda: bool, rowwise: bool) -> bool:
    """Whether cuBLAS / CUTLASS take this shape: _int_mm needs M > 16 and K, N multiples of 8; fp8 needs K and N
    multiples of 16; rowwise-scaled _scaled_mm needs sm90+ and bf16 output."""
    if not cuda:
        return False
    if kernel == "scaled_mm":
        return fp8 and rowwise and k % 16 == 0 and n % 16 == 0
    if fp8:
        return k % 16 == 0 and n % 16 == 0
    return m > 16 and k % 8 == 0 and n % 8 == 0


def plan(m: int, n: int, k: int, fp8: bool, sm_count: int, cuda: bool = True, rowwise: bool = False) -> W8Config:
    """The path per shape, from the H200 measurements in KERNEL_NOTES.md. Up to M = 16 (decode, weight-bound) the
    Triton GEMM: column tiles of 64, or 32 and split-K until there are about as many programs as SMs. Above: fp8
    cuBLAS (tensorwise, then the epilogue) up to M = 64 and rowwise _scaled_mm beyond; int8 the Triton GEMM up
    to M = 64 and cuBLAS _int_mm beyond. Triton wherever the libraries do not take the shape."""
    if m > 16 and fp8:
        if m > 64 and _library_ok("scaled_mm", m, n, k, fp8, cuda, rowwise):
            return W8Config("scaled_mm")
        if _library_ok("cublas", m, n, k, fp8, cuda, rowwise):
            return W8Config("cublas")
    if m > 64:
        if _library_ok("cublas", m, n, k, fp8, cuda, rowwise):
            return W8Config("cublas")
        return W8Config(block_m=128, block_n=128, block_k=128, num_warps=8, num_stages=4)
    block_m = 16 if m <= 16 else 64
    block_n = 64 if math.ceil(n / 64) >= sm_count else 32
    tiles = math.ceil(m / block_m) * math.ceil(n / block_n)
    split = 1
    while tiles * split < sm_count and k // (split * 2) >= 1024:
        split *= 2
    block_k = 256 if block_m == 16 else 128
    return W8Config(block_m=block_m, block_n=block_n, block_k=block_k, split=split, num_warps=4, num_stages=4)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if POISON:
        fill = float("nan") if dtype.is_floating_point and dtype.itemsize > 1 else 0
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def quantize_rows(
    x2: torch.Tensor, fp8: bool, static_scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [M, K] int8 or e4m3, scales fp32 [M]) of a 2-D x with unit stride along K."""
    m, k = x2.shape
    codes = _empty((m, k), code_dtype(fp8), x2.device)
    scales = _empty((m,), torch.float32, x2.device)
    if m:
        block_k = min(ONE_PASS_MAX_K, triton.next_power_of_2(k))
        static = static_scale if static_scale is not None else scales
        pdl = pdl_mode(x2.device)
        _quantize_rows_kernel[(m,)](
            x2,
            codes,
            scales,
            static,
            k,
            x2.stride(0),
            FP8=fp8,
            STATIC=static_scale is not None,
            RECIP=x2.is_cuda,
            BLOCK_K=block_k,
            ONE_PASS=block_k >= k,
            PDL=pdl,
            num_warps=warps_for_row(block_k),
            launch_pdl=bool(pdl),
        )
    return codes, scales


def _as_tma(cfg: W8Config) -> W8TmaConfig:
    return W8TmaConfig(block_n=cfg.block_n, block_m=cfg.block_m, split=cfg.split, stages=cfg.num_stages,
                       num_warps=cfg.num_warps, ku=max(1, cfg.block_k // 128))


def _tma_config(m: int, n: int, k: int, fp8: bool, x: torch.Tensor) -> W8Config | None:
    """The TMA kernel's launch on Hopper at decode sizes (w8a8_tma_plan), as a W8Config; None elsewhere."""
    if not x.is_cuda:
        return None
    info = device_info(x.device)
    tma = w8a8_tma_plan(m, n, k, fp8, info.name, info.capability, info.sms)
    if tma is None:
        return None
    return W8Config("tma", block_m=tma.block_m, block_n=tma.block_n, block_k=128 * tma.ku, split=tma.split,
                    num_warps=tma.num_warps, num_stages=tma.stages)


def _rowwise_ok(device: torch.device, out_dtype: torch.dtype) -> bool:
    """torch._scaled_mm with rowwise scales: CUTLASS on sm90+, bf16 output."""
    return device.type == "cuda" and out_dtype == torch.bfloat16 and device_info(device).capability >= (9, 0)


def _sm_count(device: torch.device) -> int:
    return device_info(device).sms


def _checked_plan(
    m: int, n: int, k: int, fp8: bool, on: torch.Tensor, out_dtype: torch.dtype, config: W8Config | None
) -> W8Config:
    """`config`, or the plan for this shape on `on`'s device (the TMA kernel where it applies, else `plan`); a
    ValueError where the path named does not take the shape."""
    device, cuda = on.device, on.is_cuda
    rowwise = _rowwise_ok(device, out_dtype)
    cfg = config or _tma_config(m, n, k, fp8, on) or plan(m, n, k, fp8, _sm_count(device), cuda, rowwise)
    if cfg.kernel == "tma" and not ((cuda or INTERPRET) and supports_w8a8_tma(n, k, _as_tma(cfg))):
        raise ValueError(f"kernel 'tma' does not take N={n}, K={k} with {cfg} on {device}; use the triton kernel")
    if cfg.kernel not in ("triton", "tma") and not _library_ok(cfg.kernel, m, n, k, fp8, cuda, rowwise):
        raise ValueError(
            f"kernel {cfg.kernel!r} does not take M={m}, N={n}, K={k} ({'fp8' if fp8 else 'int8'}, "
            f"{out_dtype}, {device}); use the triton kernel"
        )
    return cfg


def _linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    fp8: bool,
    config: W8Config | None,
) -> torch.Tensor:
    """quantize_rows, then _scaled_mm: the W8A8 linear on x [..., K] -> [..., N] in x's dtype."""
    n, k = weight.shape
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    if m == 0:
        return _empty((m, n), x.dtype, x.device).reshape(*lead, n)
    cfg = _checked_plan(m, n, k, fp8, x, x.dtype, config)
    static = None if input_scale is None else input_scale.reshape(-1)[:1].to(torch.float32)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        codes, sx = quantize_rows(x2, fp8, static)  # [M, K], [M]
        out = _scaled_mm(codes, sx, weight, weight_scale, bias, x.dtype, cfg)
    return out.reshape(*lead, n)


def _scaled_mm(
    codes: torch.Tensor,
    sx: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    cfg: W8Config,
) -> torch.Tensor:
    """out [M, N] = (codes [M, K] @ weight [N, K]^T) * sx [M] * weight_scale (+ bias) in out_dtype, by cfg.kernel
    (module docstring): codes and weight both int8 or both e4m3, codes' rows of unit stride along K, sx float32
    contiguous, M >= 1; on the current device."""
    m, k = codes.shape
    n = weight.shape[0]
    fp8 = codes.dtype == torch.float8_e4m3fn
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    sw = weight_scale.reshape(-1)
    if cfg.kernel == "scaled_mm":
        # A per-channel float32 scale is already the [1, N] row torch wants: no copy (a prefill's host time counts,
        # KERNEL_NOTES.md "FP8 prefill is host-bound").
        scale_b = sw.reshape(1, n) if sw.numel() == n and sw.dtype == torch.float32 else (
            sw.to(torch.float32).expand(n).contiguous().reshape(1, n))
        bias_mm = None if bias is None else bias.to(torch.bfloat16)
        return torch._scaled_mm(
            codes, weight.t(), scale_a=sx.reshape(m, 1), scale_b=scale_b, bias=bias_mm, out_dtype=torch.bfloat16
        )
    out = _empty((m, n), out_dtype, codes.device)
    pdl = pdl_mode(codes.device)
    has_bias = bias is not None
    bias_arg = bias if bias is not None else sx  # not read without a bias
    if cfg.kernel == "tma":
        codes = codes if codes.is_contiguous() else codes.contiguous()
        w8a8_tma(codes, sx, weight if weight.is_contiguous() else weight.contiguous(), sw, bias, out, _as_tma(cfg))
        return out
    if cfg.kernel == "cublas":
        if fp8:
            one = torch.ones((), dtype=torch.float32, device=codes.device)
            acc = torch._scaled_mm(codes, weight.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
        else:
            acc = torch._int_mm(codes, weight.t())  # int32 [M, N]
        grid = (triton.cdiv(m, 32), triton.cdiv(n, 128))
        _epilogue_kernel[grid](
            acc,
            sx,
            sw,
            bias_arg,
            out,
            m,
            n,
            1,
            0,
            SCALE=True,
            SB_PER_N=sw.numel() > 1,
            HAS_BIAS=has_bias,
            BLOCK_M=32,
            BLOCK_N=128,
            PDL=pdl,
            num_warps=4,
            launch_pdl=bool(pdl),
        )
        return out
    k_per_split = triton.cdiv(triton.cdiv(k, cfg.split), cfg.block_k) * cfg.block_k
    split = triton.cdiv(k, k_per_split)
    target = out if split == 1 else _empty((split, m, n), torch.float32, codes.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    _gemm_kernel[grid](
        codes,
        weight,
        sx,
        sw,
        bias_arg,
        target,
        m,
        n,
        k,
        k_per_split,
        codes.stride(0),
        weight.stride(0),
        n,
        m * n,
        SB_PER_N=sw.numel() > 1,
        HAS_BIAS=has_bias,
        FP8=fp8,
        SPLIT_K=split > 1,
        EVEN_K=k % cfg.block_k == 0,
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m,
        PDL=pdl,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        launch_pdl=bool(pdl),
    )
    if split > 1:
        grid = (triton.cdiv(m, 16), triton.cdiv(n, 128))
        _epilogue_kernel[grid](
            target,
            sx,
            sw,
            bias_arg,
            out,
            m,
            n,
            split,
            m * n,
            SCALE=False,
            SB_PER_N=True,
            HAS_BIAS=has_bias,
            BLOCK_M=16,
            BLOCK_N=128,
            PDL=pdl,
            num_warps=4,
            launch_pdl=bool(pdl),
        )
    return out


def _usable(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, weight_dtype: torch.dtype) -> bool:
    n, k = weight.shape
    return (
        (x.is_cuda or INTERPRET)
        and x.dtype in _DTYPES
        and weight.dtype == weight_dtype
        and x.shape[-1] == k
        and weight_scale.numel() in (1, n)
    )


def w8a8_int8_linear(
    x: torch.Tensor,
    weight_q: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    config: W8Config | None = None,
) -> torch.Tensor:
    """Triton/cuBLAS int8 W8A8; same contract as accel.runtime.ops.w8a8_int8_linear (the reference), which runs
    for inputs the kernels do not take. `config` overrides the plan (tests, benchmarks)."""
    if not _usable(x, weight_q, weight_scale, torch.int8):
        return int8_reference(x, weight_q, weight_scale, bias)
    return _linear(x, weight_q, weight_scale, None, bias, False, config)


def fp8_linear(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    *,
    config: W8Config | None = None,
) -> torch.Tensor:
    """fp8 e4m3 W8A8 (Triton / torch._scaled_mm); same contract as accel.runtime.ops.fp8_linear (the reference),
    which runs for inputs the kernels do not take and on GPUs without fp8 (before sm89)."""
    if not (fp8_supported(x.device) and _usable(x, weight_fp8, weight_scale, torch.float8_e4m3fn)):
        return fp8_reference(x, weight_fp8, weight_scale, input_scale, bias)
    return _linear(x, weight_fp8, weight_scale, input_scale, bias, True, config)


def w8a8_scaled_mm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    *,
    config: W8Config | None = None,
) -> torch.Tensor:
    """The W8A8 GEMM on activations already quantized (by quantize_rows, or the norm and SwiGLU kernels that quantize
    their output): _scaled_mm with the linear ops' plan and paths, so w8a8_scaled_mm(*quantize_rows(x), ...) is
    fp8_linear(x, ...) / w8a8_int8_linear(x, ...) bit for bit. Same contract as accel.runtime.ops.w8a8_scaled_mm
    (the reference), which runs for inputs the kernels do not take: tensors off the GPU (unless TRITON_INTERPRET=1),
    out_dtype other than fp16 / bf16 / fp32, e4m3 codes before sm89. `config` overrides the plan."""
    check_w8a8_scaled_mm(x_codes, x_scale, weight, weight_scale, bias, out_dtype)
    fp8 = x_codes.dtype == torch.float8_e4m3fn
    device = x_codes.device
    usable = (x_codes.is_cuda or INTERPRET) and out_dtype in _DTYPES and (not fp8 or fp8_supported(device))
    if not usable:
        return scaled_mm_reference(x_codes, x_scale, weight, weight_scale, bias, out_dtype)
    n, k = weight.shape
    lead = x_codes.shape[:-1]
    codes = x_codes.reshape(-1, k)
    if codes.stride(-1) != 1:
        codes = codes.contiguous()
    m = codes.shape[0]
    if m == 0:
        return _empty((m, n), out_dtype, device).reshape(*lead, n)
    sx = x_scale.reshape(-1)
    sx = (sx.expand(m) if sx.numel() == 1 else sx).contiguous()  # [M]: a [1] scale is every row's
    cfg = _checked_plan(m, n, k, fp8, codes, out_dtype, config)
    with torch.cuda.device(device) if codes.is_cuda else contextlib.nullcontext():
        out = _scaled_mm(codes, sx, weight, weight_scale, bias, out_dtype, cfg)
    return out.reshape(*lead, n)
