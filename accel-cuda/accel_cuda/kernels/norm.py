"""RMSNorm in Triton: one launch per call, where core's torch reference runs ~7 kernels.

Op rms_norm (accel.runtime.norm_ops.rms_norm is the contract and the reference): for each row of x [..., H],
y = w * cast_x(x / sqrt(mean(x^2) + eps)), the mean and rsqrt in float32, the normalized row cast to x's dtype
before the weight multiply, y in torch's promotion of w's and x's dtypes. A Llama-3-8B forward runs it 65 times;
the reference chain (cast, pow, mean, add, rsqrt, mul, cast, mul) costs ~2 us of device time per kernel inside a
CUDA graph at decode and ~30 us of host time per launch in an eager prefill.

Each program holds BLOCK_M whole rows in registers (BLOCK_M = 1 at Llama's hidden 4096; several rows per program
for short rows): loads them once, sums the squares in float32, scales by rsqrt, casts to x's dtype, multiplies by
the weight in float32 and rounds once to the output dtype, as torch computes the product (of two 16-bit values it is
exact in float32). H up to MAX_HIDDEN, the tail past H masked.

Not bit-exact with torch: the row's sum of squares is added in the kernel's tree order, torch's in its own (CPU:
cascade sum, then divided by H; CUDA: its reduction tree, times fp32(1 / H), which the kernel uses too). rsqrt is
the hardware approximation in both on a GPU (numpy's 1 / sqrt under the interpreter). So the float32 normalized row
agrees with torch's to ~1e-6 relative; the cast to bf16 (fp16) then rounds the same way except for an element
within that distance of a rounding boundary: a rare element (of order 1e-4 of them in bf16: 1e-6 over bf16's 2^-8)
lands one ulp of x's dtype away, and its product with the weight about one ulp of the output away. In float32 the
output agrees to ~1e-6 relative. tests/test_cuda_rms_norm.py checks these bounds on a GPU and
tests/test_cuda_interpret.py under the interpreter, which truncates float32 -> bf16 instead of rounding to nearest
(bf16 there agrees to one ulp, not rarely).

Op add_rms_norm (accel.runtime.norm_ops.add_rms_norm) runs the same kernel with ADD_RESIDUAL set: it loads the
rows of x and residual, adds them in float32 and rounds once to x's dtype as torch does (h, stored bit for bit equal
to torch's x + residual), then normalizes h as above; the normalized output carries rms_norm's caveat, h none. One
launch where the reference runs the add and the ~7 kernels of the norm.

Ops rms_norm_quant and add_rms_norm_quant (accel.runtime.fused_quant_ops) run it with QUANT set: the W8A8 linear
that follows quantizes the normalized row per token anyway, so the kernel does it in registers instead of storing y.
It computes y exactly as above (rounded to the output dtype, then back in float32), its row's max |y|, the scale
max(max|y|, 1e-12) / qmax and the int8 or e4m3 codes of y / scale with rowquant.py's device functions, the ones
w8a8.quantize_rows runs: so the codes and scales are bit for bit those of this kernel's y quantized by
quantize_rows (RECIP on CUDA tensors, as there), and against the reference they carry rms_norm's caveat only (a
rare element of y one ulp away moves its code by at most one, and the row's scale by one ulp of y's dtype where it
is the row's largest). It stores codes [M, H] and scales [M, 1] (and h with ADD_RESIDUAL), not y: one launch where
the unfused path runs the norm and quantize_rows (2 launches, y written and read back). e4m3 codes need sm89+.

Layouts the kernel does not take run the reference: a last dimension of non-unit stride, leading dimensions that do
not collapse into one row stride, dtypes other than fp16 / bf16 / fp32, H > MAX_HIDDEN, empty tensors, and tensors
off the GPU (unless TRITON_INTERPRET=1).

Launched with programmatic dependent launch on Hopper (pdl.py): the kernel waits for the previous one before its
first load and lets the next one launch once its rows are computed.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.fused_quant_ops import add_rms_norm_quant as add_quant_reference
from accel.runtime.fused_quant_ops import check_add_rms_norm_quant, check_rms_norm_quant
from accel.runtime.fused_quant_ops import rms_norm_quant as quant_reference
from accel.runtime.norm_ops import add_rms_norm as add_reference
from accel.runtime.norm_ops import check_add_rms_norm, check_rms_norm
from accel.runtime.norm_ops import rms_norm as reference
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.rowquant import _codes, _row_scale, code_dtype, fp8_supported

__all__ = ["MAX_HIDDEN", "NormConfig", "add_rms_norm", "add_rms_norm_quant", "plan", "rms_norm", "rms_norm_quant"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HIDDEN = 16384  # a row of fp32 in registers: 16 warps x 32 lanes x 32 values
_ROW_ELEMENTS = 2048  # short rows are packed into programs of about this many elements


# The row count only bounds the mask: not specialized (one compile for every batch size, decode's 1 included).
@triton.jit(do_not_specialize=["M"])
def _rms_norm_kernel(
    x_ptr,
    r_ptr,
    w_ptr,
    out_ptr,
    h_ptr,
    q_ptr,
    s_ptr,
    M,
    stride_xm,
    stride_rm,
    stride_w,
    stride_om,
    eps,
    H: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_H: tl.constexpr,
    ADD_RESIDUAL: tl.constexpr,
    QUANT: tl.constexpr,
    FP8: tl.constexpr,
    RECIP: tl.constexpr,
    Y_F32: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program i: rows i * BLOCK_M .. + BLOCK_M of x [M, H] (row stride stride_xm) -> out [M, H]. ADD_RESIDUAL:
    x + residual (row stride stride_rm) rounded to x's dtype is normalized instead, and stored to h [M, H] (row
    stride stride_om, as out); r_ptr and h_ptr are unused otherwise. QUANT: y (float32 when Y_F32, else rounded to
    x's dtype) is quantized per row instead of stored: codes (int8, or e4m3 when FP8) to q_ptr [M, H] (row stride
    stride_om) and scales to s_ptr [M] (RECIP: as torch divides on CUDA); out_ptr is unused then. PDL: pdl.py's
    mode."""
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_H)
    col_ok = cols < H
    mask = (rows < M)[:, None] & col_ok[None, :]
    rows = rows.to(tl.int64)  # M * H may pass 2^31 in a long prefill
    pdl_enter(PDL)
    x = tl.load(x_ptr + rows[:, None] * stride_xm + cols[None, :], mask=mask, other=0.0)  # [BLOCK_M, BLOCK_H]
    if ADD_RESIDUAL:  # torch's x + residual: the float32 sum rounded once to x's dtype
        r = tl.load(r_ptr + rows[:, None] * stride_rm + cols[None, :], mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * stride_om + cols[None, :], x, mask=mask)
    h = x.to(tl.float32)
    mean_sq = tl.sum(h * h, axis=1) * (1.0 / H)  # [BLOCK_M]; masked columns add 0
    normed = (h * tl.math.rsqrt(mean_sq + eps)[:, None]).to(x.dtype)  # cast to x's dtype before the weight
    w = tl.load(w_ptr + cols * stride_w, mask=col_ok, other=0.0).to(tl.float32)
    y = normed.to(tl.float32) * w[None, :]
    if QUANT:  # y's values as the norm alone stores them, quantized as w8a8.quantize_rows does (rowquant.py)
        if not Y_F32:
            y = y.to(x.dtype).to(tl.float32)
        scale = _row_scale(tl.max(tl.abs(y), axis=1), RECIP, FP8)  # [BLOCK_M]; masked columns hold 0
        codes = _codes(y, scale[:, None], FP8)
        pdl_release(PDL)
        tl.store(s_ptr + rows, scale, mask=rows < M)
        tl.store(q_ptr + rows[:, None] * stride_om + cols[None, :], codes, mask=mask)
    else:
        pdl_release(PDL)
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], y.to(out_ptr.dtype.element_ty), mask=mask)


@dataclass(frozen=True)
class NormConfig:
    """One launch: rows per program (a power of two) and Triton's warps per program."""

    block_m: int
    num_warps: int


def plan(rows: int, hidden: int) -> NormConfig:
    """One row per program from 2048 columns up (Llama's 4096: a decode row is one program, a 2k prefill 2048
    programs), else as many rows as fill about 2048 elements; one warp per 512 elements (16 per lane: two 16-byte
    loads of bf16), 1 to 16 warps."""
    block_h = triton.next_power_of_2(hidden)
    block_m = min(triton.next_power_of_2(max(rows, 1)), max(1, _ROW_ELEMENTS // block_h))
    return NormConfig(block_m=block_m, num_warps=max(1, min(16, block_m * block_h // 512)))


def _row_stride(x: torch.Tensor) -> int | None:
    """The stride between consecutive rows of x viewed as [M, H], or None when the leading dimensions do not
    collapse into one stride (dimensions of size 1 do not count)."""
    stride, expected = x.shape[-1], None
    for size, step in zip(reversed(x.shape[:-1]), reversed(x.stride()[:-1]), strict=True):
        if size == 1:
            continue
        if expected is None:
            stride = step
        elif step != expected:
            return None
        expected = step * size
    return stride


def _supported(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None) -> bool:
    """The tensors the kernel takes directly, their rows' layout aside (anything else runs the reference): the
    module docstring."""
    return (
        (x.is_cuda or INTERPRET)
        and x.device == weight.device
        and (residual is None or (residual.device == x.device and residual.stride(-1) == 1))
        and x.dtype in _DTYPES
        and weight.dtype in _DTYPES
        and x.numel() > 0
        and x.shape[-1] <= MAX_HIDDEN
        and x.stride(-1) == 1
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float, *, config: NormConfig | None = None) -> torch.Tensor:
    """Triton RMSNorm; same contract as accel.runtime.norm_ops.rms_norm (the reference), which runs instead for
    layouts the kernel does not take (module docstring). The kernel writes a new contiguous tensor; `config`
    overrides the plan."""
    check_rms_norm(x, weight)
    row_stride = _row_stride(x) if _supported(x, weight) else None
    if row_stride is None:
        return reference(x, weight, eps)
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    _launch(x, row_stride, None, None, weight, eps, out, None, config)
    return out


def add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    *,
    config: NormConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton residual add + RMSNorm in one launch; same contract as accel.runtime.norm_ops.add_rms_norm (the
    reference), which runs instead for layouts the kernel does not take (x's or residual's rows: module docstring).
    Returns new contiguous (normed, h); `config` overrides the plan."""
    check_add_rms_norm(x, residual, weight)
    x_stride = _row_stride(x) if _supported(x, weight, residual) else None
    r_stride = _row_stride(residual) if x_stride is not None else None
    if r_stride is None:
        return add_reference(x, residual, weight, eps)
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype), device=x.device)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, x_stride, residual, r_stride, weight, eps, out, h, config)
    return out, h


def _launch(
    x: torch.Tensor,
    x_stride: int,
    residual: torch.Tensor | None,
    r_stride: int | None,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None,
    h: torch.Tensor | None,
    config: NormConfig | None,
    quant: tuple[torch.Tensor, torch.Tensor, bool] | None = None,
) -> None:
    """One launch over x's rows into the contiguous out (and h, with a residual); with `quant` = (codes, scales,
    fp8), into the contiguous codes [..., H] and scales [..., 1] instead of out."""
    hidden = x.shape[-1]
    rows = x.numel() // hidden
    cfg = config or plan(rows, hidden)
    codes, scales, fp8 = quant if quant is not None else (None, None, False)
    target = out if out is not None else codes
    pdl = pdl_mode(x.device)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _rms_norm_kernel[(triton.cdiv(rows, cfg.block_m),)](
            x,
            x if residual is None else residual,
            weight,
            target,
            target if h is None else h,
            target if codes is None else codes,
            target if scales is None else scales,
            rows,
            x_stride,
            x_stride if r_stride is None else r_stride,
            weight.stride(0),
            hidden,
            eps,
            H=hidden,
            BLOCK_M=cfg.block_m,
            BLOCK_H=triton.next_power_of_2(hidden),
            ADD_RESIDUAL=residual is not None,
            QUANT=quant is not None,
            FP8=fp8,
            RECIP=x.is_cuda,
            Y_F32=torch.promote_types(weight.dtype, x.dtype) == torch.float32,
            PDL=pdl,
            num_warps=cfg.num_warps,
            launch_pdl=bool(pdl),
        )


def _quant_outputs(x: torch.Tensor, fp8: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """New contiguous codes [..., H] (int8 or e4m3) and float32 scales [..., 1] for x [..., H]."""
    codes = torch.empty(x.shape, dtype=code_dtype(fp8), device=x.device)
    return codes, torch.empty((*x.shape[:-1], 1), dtype=torch.float32, device=x.device)


def rms_norm_quant(
    x: torch.Tensor, weight: torch.Tensor, eps: float, fp8: bool, *, config: NormConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton RMSNorm with its output quantized per token in the same launch (QUANT: module docstring); same
    contract as accel.runtime.fused_quant_ops.rms_norm_quant (the reference), which runs instead for layouts the
    kernel does not take, and for fp8 on GPUs before sm89. Returns new contiguous (codes, scale)."""
    check_rms_norm_quant(x, weight, fp8)
    taken = _supported(x, weight) and (not fp8 or fp8_supported(x.device))
    row_stride = _row_stride(x) if taken else None
    if row_stride is None:
        return quant_reference(x, weight, eps, fp8)
    codes, scale = _quant_outputs(x, fp8)
    _launch(x, row_stride, None, None, weight, eps, None, None, config, (codes, scale, fp8))
    return codes, scale


def add_rms_norm_quant(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    fp8: bool,
    *,
    config: NormConfig | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton residual add + RMSNorm with the normalized h quantized per token, one launch (ADD_RESIDUAL and QUANT:
    module docstring); same contract as accel.runtime.fused_quant_ops.add_rms_norm_quant (the reference), which
    runs instead for layouts the kernel does not take, and for fp8 on GPUs before sm89. Returns new contiguous
    (codes, scale, h)."""
    check_add_rms_norm_quant(x, residual, weight, fp8)
    taken = _supported(x, weight, residual) and (not fp8 or fp8_supported(x.device))
    x_stride = _row_stride(x) if taken else None
    r_stride = _row_stride(residual) if x_stride is not None else None
    if r_stride is None:
        return add_quant_reference(x, residual, weight, eps, fp8)
    codes, scale = _quant_outputs(x, fp8)
    h = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _launch(x, x_stride, residual, r_stride, weight, eps, None, h, config, (codes, scale, fp8))
    return codes, scale, h
