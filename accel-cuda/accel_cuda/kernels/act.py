"""SwiGLU's activation in Triton: silu(gate) * up in one launch, where core's torch reference runs two kernels.

Op silu_and_mul (accel.runtime.act_ops.silu_and_mul is the contract and the reference): x [..., 2I] -> y [..., I],
y = silu(x[..., :I]) * x[..., I:]. The decoder's MLP runs it once per layer between gate_up_proj and down_proj
(Llama-3-8B: I = 14336, 32 per forward); the reference's silu and mul kernels read and write the [..., I] halves
separately, ~1-3 us of device time each inside a CUDA graph at decode.

Grid (rows, I / BLOCK): program (r, c) loads BLOCK columns of row r's gate and the same columns of its up (I
elements further), contiguous and 16-byte aligned where I and the row stride allow it (each lane loads 16 bytes of
each: 8 bf16 / fp16 values, 4 float32), and stores BLOCK columns of y. The row count is only the grid's first
dimension: one compile serves every batch size, and nothing is read on the host, so a CUDA graph captures it.

Arithmetic as torch's CUDA kernels do it: silu(g) = g / (1 + exp(-g)) in float32 (torch's formula; the division
correctly rounded, div_rn, as torch's is), rounded to x's dtype; then the product of that and up in float32, rounded
once to x's dtype (for float32 x no rounding between). The one difference is exp: tl.exp is exp2.approx(g * log2 e),
within ~2^-22 + |g| 2^-24 relative of the exact value (torch's expf: ~2^-23), so the float32 silu agrees with
torch's to a few float32 ulps for the gates of a real model (|g| < ~16). The cast to bf16 (fp16) then rounds the same
way except for a value within that distance of a rounding boundary: a rare silu (of order 1e-4 in bf16) is one ulp
of x's dtype away, and its product with up one, rarely two, ulps of the output (one ulp of s times up may straddle
two of the product's). float32 outputs agree to ~1e-6 relative (plus |g| 2^-24). tests/test_cuda_silu_mul.py checks
these bounds on a GPU and tests/test_cuda_interpret.py under the interpreter (numpy's exp there; the interpreter
truncates float32 -> bf16 instead of rounding to nearest, so bf16 agrees to one ulp per rounding, not rarely).

Op silu_and_mul_quant (accel.runtime.fused_quant_ops.silu_and_mul_quant): y quantized per token for the W8A8
down projection, in the same launch. The row's scale needs its whole max |y| first, so the grid is one program per
row holding the row in registers (as w8a8.quantize_rows' one-pass form: I up to ONE_PASS_MAX_K = 16384, 4 to 16
warps; Llama-3-8B's 14336 is one 16-warp program a row): it computes y with the same device function as above
(_silu_and_mul, so y is bit for bit the one silu_and_mul stores), then the scale and the int8 or e4m3 codes with
rowquant.py's functions, which quantize_rows runs: codes and scales equal silu_and_mul then quantize_rows bit for bit
(and carry silu_and_mul's caveat against the reference). Rows longer than 16384 run exactly that pair of kernels.
e4m3 codes need sm89+.

Layouts the kernels do not take run the reference: a last dimension of non-unit stride, leading dimensions that do
not collapse into one row stride, dtypes other than fp16 / bf16 / fp32, empty tensors, and tensors off the GPU
(unless TRITON_INTERPRET=1). Both kernels are launched with programmatic dependent launch on Hopper (pdl.py).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from accel.runtime.act_ops import check_silu_and_mul
from accel.runtime.act_ops import silu_and_mul as reference
from accel.runtime.fused_quant_ops import check_silu_and_mul_quant
from accel.runtime.fused_quant_ops import silu_and_mul_quant as quant_reference
from accel_cuda.kernels.norm import _row_stride
from accel_cuda.kernels.pdl import pdl_enter, pdl_mode, pdl_release
from accel_cuda.kernels.rowquant import ONE_PASS_MAX_K, _codes, _row_scale, code_dtype, fp8_supported, warps_for_row

__all__ = ["ActConfig", "plan", "quant_plan", "silu_and_mul", "silu_and_mul_quant"]

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_BLOCK = 1024  # columns per program (Llama-3-8B's I = 14336: 14 programs a row)


@triton.jit
def _silu_and_mul(g, up):
    """silu(g) * up in up's dtype (x's) as torch computes it: g / (1 + exp(-g)) in float32, the division correctly
    rounded (div_rn), rounded to x's dtype, times up in float32, rounded once to x's dtype."""
    g = g.to(tl.float32)
    silu = tl.math.div_rn(g, 1.0 + tl.exp(-g)).to(up.dtype)  # torch: x / (1 + exp(-x)), in x's dtype
    return (silu.to(tl.float32) * up.to(tl.float32)).to(up.dtype)


@triton.jit
def _silu_and_mul_kernel(
    x_ptr,
    out_ptr,
    stride_xm,
    I: tl.constexpr,  # noqa: E741 (the op's name for the intermediate size)
    BLOCK: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program (r, c): columns c * BLOCK .. + BLOCK of row r: x[r, :I] the gate, x[r, I:] up -> out [rows, I]."""
    row = tl.program_id(0).to(tl.int64)  # rows * 2I may pass 2^31 in a long prefill
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < I
    gate_ptrs = x_ptr + row * stride_xm + cols
    pdl_enter(PDL)
    g = tl.load(gate_ptrs, mask=mask, other=0.0)
    up = tl.load(gate_ptrs + I, mask=mask, other=0.0)
    y = _silu_and_mul(g, up)
    pdl_release(PDL)
    tl.store(out_ptr + row * I + cols, y, mask=mask)


@triton.jit
def _silu_and_mul_quant_kernel(
    x_ptr,
    q_ptr,
    s_ptr,
    stride_xm,
    I: tl.constexpr,  # noqa: E741
    BLOCK: tl.constexpr,
    FP8: tl.constexpr,
    RECIP: tl.constexpr,
    PDL: tl.constexpr,
):
    """Program r: row r whole (BLOCK >= I): y = silu(gate) * up in x's dtype, then its scale to s_ptr [rows] and its
    codes (int8, or e4m3 when FP8) to q_ptr [rows, I] (RECIP: the scale as torch divides on CUDA)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < I
    gate_ptrs = x_ptr + row * stride_xm + cols
    pdl_enter(PDL)
    g = tl.load(gate_ptrs, mask=mask, other=0.0)
    up = tl.load(gate_ptrs + I, mask=mask, other=0.0)
    y = _silu_and_mul(g, up).to(tl.float32)  # masked columns: silu(0) * 0 = 0
    scale = _row_scale(tl.max(tl.abs(y), axis=0), RECIP, FP8)
    codes = _codes(y, scale, FP8)
    pdl_release(PDL)
    tl.store(s_ptr + row, scale)
    tl.store(q_ptr + row * I + cols, codes, mask=mask)


@dataclass(frozen=True)
class ActConfig:
    """One launch: columns per program (a power of two) and Triton's warps per program."""

    block: int
    num_warps: int


def plan(inter: int, element_size: int) -> ActConfig:
    """BLOCK = 1024 columns (fewer when I is smaller), one 16-byte load of gate and of up per lane: 4 warps for 16-bit
    dtypes, 8 for float32. Independent of the row count, so decode's 1..64 rows and a prefill share one compile: a
    decode row of Llama-3-8B is 14 programs, a 2k prefill 28672."""
    block = min(_BLOCK, triton.next_power_of_2(inter))
    return ActConfig(block=block, num_warps=max(1, min(8, block * element_size // 512)))


def _supported(x: torch.Tensor) -> bool:
    """The tensors the kernel takes directly, their rows' layout aside (anything else runs the reference): the
    module docstring."""
    return (x.is_cuda or INTERPRET) and x.dtype in _DTYPES and x.numel() > 0 and x.stride(-1) == 1


def silu_and_mul(x: torch.Tensor, *, config: ActConfig | None = None) -> torch.Tensor:
    """Triton silu(gate) * up; same contract as accel.runtime.act_ops.silu_and_mul (the reference), which runs
    instead for layouts the kernel does not take (module docstring). The kernel writes a new contiguous tensor
    [..., I]; `config` overrides the plan."""
    check_silu_and_mul(x)
    row_stride = _row_stride(x) if _supported(x) else None
    if row_stride is None:
        return reference(x)
    inter = x.shape[-1] // 2
    rows = x.numel() // x.shape[-1]
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    cfg = config or plan(inter, x.element_size())
    pdl = pdl_mode(x.device)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _silu_and_mul_kernel[(rows, triton.cdiv(inter, cfg.block))](
            x, out, row_stride, I=inter, BLOCK=cfg.block, PDL=pdl, num_warps=cfg.num_warps, launch_pdl=bool(pdl)
        )
    return out


def quant_plan(inter: int) -> ActConfig | None:
    """silu_and_mul_quant's launch: the whole row in one program (BLOCK = I rounded up to a power of two) with
    quantize_rows' warps (4 / 8 / 16); None for I > ONE_PASS_MAX_K, which runs silu_and_mul, then quantize_rows."""
    block = triton.next_power_of_2(inter)
    return ActConfig(block=block, num_warps=warps_for_row(block)) if block <= ONE_PASS_MAX_K else None


def silu_and_mul_quant(
    x: torch.Tensor, fp8: bool, *, config: ActConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton silu(gate) * up quantized per token in the same launch (module docstring); same contract as
    accel.runtime.fused_quant_ops.silu_and_mul_quant (the reference), which runs instead for layouts the kernel does
    not take, and for fp8 on GPUs before sm89. Returns new contiguous (codes [..., I], scale [..., 1]); `config`
    overrides the plan (its block must hold the row: at least I)."""
    check_silu_and_mul_quant(x, fp8)
    taken = _supported(x) and (not fp8 or fp8_supported(x.device))
    row_stride = _row_stride(x) if taken else None
    if row_stride is None:
        return quant_reference(x, fp8)
    inter = x.shape[-1] // 2
    rows = x.numel() // x.shape[-1]
    lead = x.shape[:-1]
    cfg = config or quant_plan(inter)
    if cfg is not None and cfg.block < inter:
        raise ValueError(f"silu_and_mul_quant: config {cfg} must hold the whole row, block >= I = {inter}")
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        if cfg is None:  # rows past the one-pass limit: the unfused pair of kernels, the same bits
            from accel_cuda.kernels.w8a8 import quantize_rows

            codes, scale = quantize_rows(silu_and_mul(x).reshape(rows, inter), fp8)
            return codes.reshape(*lead, inter), scale.reshape(*lead, 1)
        codes = torch.empty((*lead, inter), dtype=code_dtype(fp8), device=x.device)
        scale = torch.empty((*lead, 1), dtype=torch.float32, device=x.device)
        pdl = pdl_mode(x.device)
        _silu_and_mul_quant_kernel[(rows,)](
            x, codes, scale, row_stride, I=inter, BLOCK=cfg.block, FP8=fp8, RECIP=x.is_cuda, PDL=pdl,
            num_warps=cfg.num_warps, launch_pdl=bool(pdl),
        )
    return codes, scale
