"""W4A16 linear for M = 17..128 on Hopper's wgmma with the dequantization overlapped (Gluon), on the decode GEMV's
words (permute_nibbles' [N, K/8] int32), so one stored layout still serves every M. Experimental, not dispatched:
right to the bf16 output's rounding (GPU tests) but measured 1.2-1.4x slower than wxa16_tma_dot at every M on the
H200 (session 12, KERNEL_NOTES.md: both kernels run ~1.7 warps per scheduler, and this one's step is one long
chain behind CTA barriers).

Why: the Triton tensor-core kernel (wxa16_tma_dot.py) dequantizes a K step in registers and then runs its wgmma,
one after the other in the same warps: at M = 64 on 14336 x 4096 that is ~10 us of dequantization plus ~8 us of
tensor-core time per SM, serialized (1.36x bf16 cuBLAS; M = 128 0.98x). Here each K step's dequantized tile goes
to shared memory and its wgmma is issued asynchronously, so the warps dequantize step i + 1 while the tensor
cores multiply step i (the mainloop of Machete / CUTLASS's mixed-input GEMM, without the extra warp roles):

    step i:  wait for step i's TMA copies (words, x) -> dequantize words into A buffer i % 2 (shared)
             -> fence, CTA barrier -> wgmma(A_i, x_i^T) async -> wait until only step i's wgmmas are in flight
             -> refill the buffers step i - 1 used with step i + STAGES - 1

Dequantization is wxa16_tma_dot's exact pair arithmetic: for pair p of a word (codes 2p, 2p + 1, permute_nibbles
slots p and p + 4), (w >> 4p) & 0x000F000F | 0x43004300 is the bf16 pair (128 + u_lo, 128 + u_hi) exactly;
subtracting (128 + 8 + zp) gives q - zp exactly and one bf16x2 multiply rounds (q - zp) * s once, as the reference
dequantizes; a word's four pairs are its eight codes in K order, 16 bytes of the A tile. Swap-AB: the weights are
wgmma's M side (64 rows a warpgroup), x^T the N side (BLOCK_M = 32..128, rows past M zero from the descriptor).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_init,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from accel_cuda.kernels.w4a16_gemv import _counters
from accel_cuda.kernels.w4a16_mma import _store_tile

__all__ = ["w4a16_wgmma"]

GROUP = 128

# One permuted word -> its four pairs (q - zp) * s as bf16x2, K order: $4 the word, $5 (128 + 8 + zp) twice, $6 s
# twice (bf16x2). Pair p: (w >> 4p) & 0x000F000F | magic, minus (128 + 8 + zp), times s.
_PAIR_STEP = """{shift}lop3.b32 t, {src}, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 t, t, $5;
mul.rn.bf16x2 ${p}, t, $6;
"""
_PAIRS_ASM = gl.constexpr("{\n.reg .b32 t;\n" + "".join(
    _PAIR_STEP.format(p=p, shift=f"shr.u32 t, $4, {4 * p};\n" if p else "", src="t" if p else "$4")
    for p in range(4)) + "}")
# fp32 -> the bf16 value twice in one int32.
_CVT_ASM = gl.constexpr("cvt.rn.bf16x2.f32 $0, $1, $1;")


@gluon.jit
def _pair(v, W_L: gl.constexpr):
    return gl.inline_asm_elementwise(_CVT_ASM, "=r,f", [v], dtype=gl.int32, is_pure=True, pack=1)


@gluon.jit
def _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_lo, x_hi, s_smem, z_smem, bars, stage, step, g_first, row0,
           pred, HAS_ZP: gl.constexpr, NBYTES: gl.constexpr):
    """TMA copies of K step `step` (group g_first + step) into buffer `stage`, completing on its barrier: the words
    box [BLOCK_N, 16], x's two 64-input boxes, and the 8 groups of scales (16 zero points) around the step's group (a
    TMA box row is at least 16 bytes; the step picks its column). Each operand has an allocation of its own, so
    Gluon's shared-memory hazard analysis sees the copies as disjoint (fewer CTA barriers)."""
    g = g_first + step
    bar = bars.index(stage)
    mbarrier.expect(bar, NBYTES, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [row0, 16 * g], bar, w_smem.index(stage), pred=pred)
    tma.async_copy_global_to_shared(s_desc, [row0, (g // 8) * 8], bar, s_smem.index(stage), pred=pred)
    if HAS_ZP:
        tma.async_copy_global_to_shared(z_desc, [row0, (g // 16) * 16], bar, z_smem.index(stage), pred=pred)
    tma.async_copy_global_to_shared(x_desc, [0, g * 128], bar, x_lo.index(stage), pred=pred)
    tma.async_copy_global_to_shared(x_desc, [0, g * 128 + 64], bar, x_hi.index(stage), pred=pred)


@gluon.jit
def _column(box, col, COLS: gl.constexpr, L: gl.constexpr):
    """Column `col` of a [BLOCK_N, COLS] register tile, as fp32 [BLOCK_N] (a select and a row sum)."""
    hit = gl.expand_dims(gl.arange(0, COLS, layout=gl.SliceLayout(0, L)), 0) == col
    return gl.sum(gl.where(hit, box.to(gl.float32), 0.0), axis=1)


@gluon.jit
def _dequant_store(w_smem, st, half, zp, sp, a_smem, buf, W_L: gl.constexpr, BLOCK_N: gl.constexpr):
    """Words 8 half .. 8 half + 7 of each row (64 inputs) -> (q - zp) * s in bf16, K order, into A buffer `buf`."""
    words = w_smem.index(st).slice(8 * half, 8, dim=1).load(W_L)
    p0, p1, p2, p3 = gl.inline_asm_elementwise(
        _PAIRS_ASM, "=r,=r,=r,=r,r,r,r", [words, zp, sp], dtype=(gl.int32, gl.int32, gl.int32, gl.int32),
        is_pure=True, pack=1)
    a_smem.index(buf).store(gl.reshape(gl.join(gl.join(p0, p2), gl.join(p1, p3)), [BLOCK_N, 32]))  # p0 p1 p2 p3


@gluon.jit
def _wgmma_kernel(
    x_desc, w_desc, s_desc, z_desc, out_ptr, ws_ptr, cnt_ptr,
    M, N, STEPS, SPLIT,
    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, HAS_ZP: gl.constexpr,
    WARPS_M: gl.constexpr, num_warps: gl.constexpr,
):
    # warpgroups: BLOCK_N / 64 along the weight rows, WARPS_M along the activation rows (each multiplies the whole
    # A tile by its BLOCK_M / WARPS_M columns of x^T: more warps per SM at the same shared memory)
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps // WARPS_M, WARPS_M],
                                                  instr_shape=[16, BLOCK_M // WARPS_M, 16])
    # words of one 64-input half [BLOCK_N, 8]: TPR threads a row, 8 / TPR words each, rows split across warps in
    # order. The scale box [BLOCK_N, 8] shares the layout, so a row's scale lands in the threads that hold its words.
    TPR: gl.constexpr = 32 * num_warps // BLOCK_N
    W_L: gl.constexpr = gl.BlockedLayout([1, 8 // TPR], [32 // TPR, TPR], [num_warps, 1], [1, 0])
    Z_L: gl.constexpr = gl.BlockedLayout([1, 16 // TPR], [32 // TPR, TPR], [num_warps, 1], [1, 0])
    A_I32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    A_BF16: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    NBYTES: gl.constexpr = BLOCK_N * 64 + 2 * BLOCK_M * 64 * 2 + BLOCK_N * 16 * (2 if HAS_ZP else 1)

    pid_n = gl.program_id(0)
    pid_s = gl.program_id(1)
    row0 = pid_n * BLOCK_N
    g_first = pid_s * STEPS

    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, BLOCK_N, 16], w_desc.layout)
    x_lo = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, 64], x_desc.layout)
    x_hi = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_M, 64], x_desc.layout)
    s_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BLOCK_N, 8], s_desc.layout)
    z_smem = gl.allocate_shared_memory(gl.int8, [STAGES if HAS_ZP else 1, BLOCK_N, 16], z_desc.layout)
    a_lo = gl.allocate_shared_memory(gl.int32, [2, BLOCK_N, 32], A_I32)
    a_hi = gl.allocate_shared_memory(gl.int32, [2, BLOCK_N, 32], A_I32)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    for s in gl.static_range(STAGES - 1):
        _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_lo, x_hi, s_smem, z_smem, bars, s, s, g_first, row0,
               s < STEPS, HAS_ZP, NBYTES)

    zeros = gl.zeros([BLOCK_N, 8], gl.int32, W_L)  # broadcasts a row's pair over its words
    acc = warpgroup_mma_init(gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA))  # the loop carries the async token
    for i in range(STEPS):
        st = i % STAGES
        buf = i % 2
        mbarrier.wait(bars.index(st), (i // STAGES) & 1)
        col = (g_first + i) % 8
        sp = gl.expand_dims(_pair(_column(s_smem.index(st).load(W_L), col, 8, W_L), W_L), 1) + zeros
        if HAS_ZP:
            z = _column(z_smem.index(st).load(Z_L), (g_first + i) % 16, 16, Z_L)
            zf = gl.convert_layout(z, gl.SliceLayout(1, W_L), assert_trivial=True) + 136.0
            zp = gl.expand_dims(_pair(zf, W_L), 1) + zeros
        else:
            zp = gl.full([BLOCK_N, 8], 0x43084308, gl.int32, W_L)  # the bf16 pair (136, 136): 128 + 8
        _dequant_store(w_smem, st, 0, zp, sp, a_lo, buf, W_L, BLOCK_N)
        _dequant_store(w_smem, st, 1, zp, sp, a_hi, buf, W_L, BLOCK_N)
        fence_async_shared()
        # step i - 1's wgmmas (they ran while this step dequantized) are done: its stage may be refilled
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        gl.thread_barrier()
        nxt = i + STAGES - 1
        _issue(w_desc, x_desc, s_desc, z_desc, w_smem, x_lo, x_hi, s_smem, z_smem, bars, nxt % STAGES, nxt, g_first,
               row0, nxt < STEPS, HAS_ZP, NBYTES)
        acc = warpgroup_mma(a_lo.index(buf)._reinterpret(gl.bfloat16, [BLOCK_N, 64], A_BF16),
                            x_lo.index(st).permute((1, 0)), acc, is_async=True)
        acc = warpgroup_mma(a_hi.index(buf)._reinterpret(gl.bfloat16, [BLOCK_N, 64], A_BF16),
                            x_hi.index(st).permute((1, 0)), acc, is_async=True)
    acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))
    rows = row0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(1, MMA))
    cols = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(0, MMA))
    _store_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, cols, pid_n, pid_s, M, N, SPLIT, BLOCK_N, BLOCK_M, MMA)


def w4a16_wgmma(
    x: torch.Tensor,
    words: torch.Tensor,
    scales: torch.Tensor,
    zero_points: torch.Tensor | None = None,
    *,
    block_n: int = 64,
    block_m: int = 64,
    split: int = 1,
    stages: int = 4,
    warps_m: int = 1,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ ((q - zp) * s)^T for x [M <= block_m, K] bf16, permute_nibbles' words [N, K/8] int32 (codes u = q + 8
    in the nibbles), scales [N, K/128] bf16, zero points [N, K/128] (int8, or None: symmetric). Warps: 4 x (block_n /
    64) x warps_m (warpgroups along the activation rows, 1 or 2)."""
    k = x.shape[-1]
    n = words.shape[0]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    groups = k // GROUP
    if warps_m not in (1, 2) or (block_m // warps_m) % 8:
        raise ValueError(f"w4a16_wgmma: warps_m must be 1 or 2 with block_m / warps_m a multiple of 8, got "
                         f"warps_m={warps_m} block_m={block_m}")
    if (m > block_m or block_m > 256 or block_n not in (64, 128) or n % block_n or k % GROUP or groups % split
            or groups % (16 if zero_points is not None else 8) or x.dtype != torch.bfloat16):
        raise ValueError(f"w4a16_wgmma: M={m} N={n} K={k} {x.dtype} does not tile with block_m={block_m} "
                         f"block_n={block_n} split={split}")
    result = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device) if out is None else out
    steps = groups // split
    w_desc = TensorDescriptor.from_tensor(words, [block_n, 16],
                                          gl.NVMMASharedLayout.get_default_for([block_n, 16], gl.int32))
    s_desc = TensorDescriptor.from_tensor(scales, [block_n, 8], gl.NVMMASharedLayout(0, 16, rank=2))
    z_desc = (TensorDescriptor.from_tensor(zero_points, [block_n, 16], gl.NVMMASharedLayout(0, 8, rank=2))
              if zero_points is not None else s_desc)
    x_desc = TensorDescriptor.from_tensor(x2, [block_m, 64],
                                          gl.NVMMASharedLayout.get_default_for([block_m, 64], gl.bfloat16))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else result
    cnt = _counters(x.device, n // block_n)
    grid = (n // block_n, split)
    _wgmma_kernel[grid](x_desc, w_desc, s_desc, z_desc, result, ws, cnt, m, n, steps, split, BLOCK_N=block_n,
                        BLOCK_M=block_m, STAGES=stages, HAS_ZP=zero_points is not None, WARPS_M=warps_m,
                        num_warps=block_n // 16 * warps_m)
    return result
