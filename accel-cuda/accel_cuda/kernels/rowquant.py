"""Per-token activation quantization as Triton device functions, shared by every kernel that quantizes a row in
registers: w8a8.quantize_rows (the W8A8 linear's own quantizer), and the norm and SwiGLU kernels that quantize their
output instead of storing it (norm.rms_norm_quant / add_rms_norm_quant, act.silu_and_mul_quant).

activation_quant's dynamic symmetric convention, computed as torch computes it on the same device, so that codes
match bit for bit: s = max(max|x|, 1e-12) / qmax (qmax 127 int8, 448 e4m3), and the codes of x / s. x / s divides
exactly (div_rn), and max / qmax does too on the CPU while torch on CUDA multiplies by the fp32 reciprocal of a
scalar divisor (RECIP). Bit-exact matters: bf16 inputs put x / s exactly on a rounding tie often enough that a
one-ulp difference in s flips codes. round() is half-to-even through the 1.5 * 2^23 trick (adding and subtracting it
rounds an fp32 |y| <= 2^22 to an integer in the current, nearest-even mode). Since every kernel calls these same
functions on the same float32 values, a fused kernel's codes equal quantize_rows' on the unfused output bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.interpret import INTERPRET  # applies the interpreter fix under TRITON_INTERPRET=1

__all__ = ["ONE_PASS_MAX_K", "code_dtype", "fp8_supported", "warps_for_row"]

ONE_PASS_MAX_K = 16384  # rows up to this long are quantized from registers (16 warps: 32 fp32 values a thread)


@triton.jit
def _codes(x, scale, FP8: tl.constexpr):
    """fp32 x -> int8 / e4m3 codes of x / scale (exact division, clamped; int8 rounds half to even first via the
    1.5 * 2^23 trick, as its conversion truncates; fp8's conversion rounds to nearest even itself)."""
    qmax = 448.0 if FP8 else 127.0
    y = tl.minimum(tl.maximum(tl.math.div_rn(x, scale), -qmax), qmax)
    return y.to(tl.float8e4nv) if FP8 else ((y + 12582912.0) - 12582912.0).to(tl.int8)


@triton.jit
def _row_scale(amax, RECIP: tl.constexpr, FP8: tl.constexpr):
    """max(max|x|, 1e-12) / qmax; RECIP: times the fp32 reciprocal, as torch's CUDA division by a scalar, else
    exact, as on the CPU."""
    qmax = 448.0 if FP8 else 127.0
    amax = tl.maximum(amax, 1e-12)
    return amax * (1.0 / qmax) if RECIP else tl.math.div_rn(amax, qmax)


def code_dtype(fp8: bool) -> torch.dtype:
    """The codes' torch dtype: float8_e4m3fn when fp8, else int8."""
    return torch.float8_e4m3fn if fp8 else torch.int8


def fp8_supported(device: torch.device) -> bool:
    """Whether Triton converts to e4m3 on this device: sm89 (Ada) and newer, or the interpreter (CPU tensors)."""
    return INTERPRET or (device.type == "cuda" and device_info(device).capability >= (8, 9))


def warps_for_row(block: int) -> int:
    """Warps for one program holding a row of `block` (a power of two, at most ONE_PASS_MAX_K) values: 4 up to 4096,
    8 up to 8192, 16 beyond (at most 32 float32 values a thread)."""
    return 4 if block <= 4096 else 8 if block <= 8192 else 16
