"""W4A16 linear for M = 1..16 on mma.sync with fragment-ordered words (Marlin's idea, written in Gluon), Hopper.

Why: the decode GEMV (w4a16_gemv_tma.py) spends ~20 instructions a 32-bit word on CUDA cores (3 shifts, 4 LOP3, 4
subtractions, 4 bf16x2 FMAs, lane sums, scales) and the tensor-core kernel (wxa16_tma_dot.py) pays Triton's layout
change from the stored word order to wgmma's operand order. Here the words are stored in the order of mma.sync's A
fragment, so a thread's word dequantizes in place into its own operand registers: 3 shifts, 4 LOP3 and 4 exact
subtractions a word, and one m16n8k16 MMA per word and warp does the products; the group scale multiplies the fp32
accumulator once per group.

Word layout (`mma_pack`): for row block rb (16 rows), group G (128 inputs), lane L = 4 g + t of a warp and k16 block
j of the group, the word holds the A fragment of mma.m16n8k16 for rows 16 rb + (g, g + 8) and inputs
128 G + 16 j + (2t, 2t + 1, 2t + 8, 2t + 9): pair p = 2 jj + h (row g + 8 h, inputs 16 j + 8 jj + 2t + e) at bits
4 p + 16 e. Stored as [N/16, K/64, 128] int32 (64-input chunk C = 2 G + j // 4, index L * 4 + j % 4), so one TMA
box [RB, 2 NG, 128] carries a step's words.
(w >> 4p) & 0x000F000F | 0x43004300 is the bf16 pair (128 + u_lo, 128 + u_hi) exactly; subtracting 128 + 8 + zp
gives q - zp exactly; the MMA sums (q - zp) x in fp32 and s multiplies once per group.

Swap-AB: the weights are the MMA's M side (16 rows per warp tile), x^T the N side (8 or 16 activation rows, zeros
past M from the descriptor's bounds).
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import mma_v2
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier, tma
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from accel_cuda.kernels.w4a16_gemv import _counters

__all__ = ["mma_pack", "w4a16_mma"]

GROUP = 128

# One word -> its four bf16x2 operand registers (q - zp exactly): $4 the word, $5 the pair (128 + 8 + zp) twice.
_WORD_ASM = gl.constexpr("""{
.reg .b32 t;
lop3.b32 t, $4, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 $0, t, $5;
shr.u32 t, $4, 4;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 $1, t, $5;
shr.u32 t, $4, 8;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 $2, t, $5;
shr.u32 t, $4, 12;
lop3.b32 t, t, 0x000F000F, 0x43004300, 0xEA;
sub.rn.bf16x2 $3, t, $5;
}""")
# The same without the subtraction: the pairs (128 + u_lo, 128 + u_hi); the kernel subtracts (128 + 8) sum(x) per group
# from the fp32 accumulator instead (GSUM).
_RAW_ASM = gl.constexpr("""{
.reg .b32 t;
lop3.b32 $0, $4, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, $4, 4;
lop3.b32 $1, t, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, $4, 8;
lop3.b32 $2, t, 0x000F000F, 0x43004300, 0xEA;
shr.u32 t, $4, 12;
lop3.b32 $3, t, 0x000F000F, 0x43004300, 0xEA;
}""")


def mma_pack(codes: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit codes u [N, K] (0..15, any integer dtype; N % 16 == 0, K % 128 == 0) -> words
    [N/16, K/64, 128] int32 in mma.sync's A-fragment order (module docstring)."""
    n, k = codes.shape
    if n % 16 or k % GROUP:
        raise ValueError(f"mma_pack: codes [N, K] need N % 16 == 0 and K % 128 == 0, got {n}x{k}")
    u = codes.to(torch.int64).view(n // 16, 2, 8, k // 64, 4, 2, 4, 2)  # [rb, h, g, C, j', jj, t, e]
    u = u.permute(0, 3, 2, 6, 4, 5, 1, 7)  # [rb, C, g, t, j', jj, h, e]
    shifts = (4 * torch.arange(4).view(2, 2, 1) + 16 * torch.arange(2).view(1, 1, 2)).to(codes.device)  # p=2jj+h, e
    words = (u << shifts).sum(dim=(-3, -2, -1))  # [rb, C, g, t, j']: disjoint bits, so the sum is the OR
    words = torch.where(words >= 2**31, words - 2**32, words)
    return words.reshape(n // 16, k // 64, 128).to(torch.int32).contiguous()


@gluon.jit
def _dequant_a(words, zc, RB: gl.constexpr, A_LAYOUT: gl.constexpr, ASM: gl.constexpr):
    """words [RB, 1, 128] (lane L's 4 k16 blocks at 4 L) int32 -> the bf16 A operand [16 RB, 64] in A_LAYOUT (q - zp
    exactly)."""
    p0, p1, p2, p3 = gl.inline_asm_elementwise(
        ASM, "=r,=r,=r,=r,r,r", [words, zc], dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True,
        pack=1)
    v0 = gl.join((p0 & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True),
                 (p0 >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True))
    v1 = gl.join((p1 & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True),
                 (p1 >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True))
    v2 = gl.join((p2 & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True),
                 (p2 >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True))
    v3 = gl.join((p3 & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True),
                 (p3 >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True))
    full = gl.join(gl.join(v0, v1), gl.join(v2, v3))  # [RB, 128, e, h, jj]
    full = gl.reshape(full, [RB, 8, 4, 4, 2, 2, 2])  # [rb, g, t, j, e, h, jj]
    full = gl.permute(full, (0, 5, 1, 3, 6, 2, 4))  # [rb, h, g, j, jj, t, e]
    a = gl.reshape(full, [RB * 16, 64])
    return gl.convert_layout(a, A_LAYOUT, assert_trivial=True)


@gluon.jit
def _issue(w_desc, x_desc, w_smem, x_smem, bars, stage, step, g_first, rb0, pred, NG: gl.constexpr,
           NBYTES: gl.constexpr):
    """TMA copies of K step `step` (groups g_first + NG step ..: the words of its 2 NG 64-input chunks in one box,
    x's chunks one box each) into buffer `stage`, completing on its barrier."""
    g = g_first + step * NG
    bar = bars.index(stage)
    mbarrier.expect(bar, NBYTES, pred=pred)
    tma.async_copy_global_to_shared(w_desc, [rb0, 2 * g, 0], bar, w_smem.index(stage), pred=pred)
    for c in gl.static_range(2 * NG):
        tma.async_copy_global_to_shared(x_desc, [0, g * 128 + 64 * c], bar, x_smem.index(stage * 2 * NG + c),
                                        pred=pred)


@gluon.jit
def _mma_kernel(
    x_desc, w_desc, st_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, STEPS, SPLIT,
    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, NG: gl.constexpr, STAGES: gl.constexpr, GSUM: gl.constexpr,
    STREAM: gl.constexpr, num_warps: gl.constexpr,
):
    RB: gl.constexpr = BLOCK_N // 16
    ASM: gl.constexpr = _RAW_ASM if GSUM else _WORD_ASM
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    W_L: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 1, 32], [num_warps, 1, 1], [2, 1, 0])
    ROWS: gl.constexpr = gl.SliceLayout(1, MMA)
    COLS: gl.constexpr = gl.SliceLayout(0, MMA)
    NBYTES: gl.constexpr = NG * (2 * RB * 128 * 4 + 2 * BLOCK_M * 64 * 2)

    pid_n = gl.program_id(0)
    pid_s = gl.program_id(1)
    rb0 = pid_n * RB
    g_first = pid_s * STEPS * NG
    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=ROWS)

    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, RB, 2 * NG, 128], w_desc.layout)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 2 * NG, BLOCK_M, 64], x_desc.layout)
    bars = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(bars.index(s), count=1)
    for s in gl.static_range(STAGES - 1):
        _issue(w_desc, x_desc, w_smem, x_smem, bars, s, s, g_first, rb0, s < STEPS, NG, NBYTES)

    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
    sink = gl.zeros([RB, 1, 128], gl.int32, W_L)  # STREAM: the words' sum, so their loads stay live
    zc = gl.full([RB, 1, 128], 0x43084308, gl.int32, W_L)  # the bf16 pair (136, 136): magic 128 + 8
    s_next0 = gl.load(st_ptr + g_first * N + rows).to(gl.float32)
    s_next1 = gl.load(st_ptr + (g_first + NG - 1) * N + rows).to(gl.float32)
    for i in range(STEPS):
        # refill the buffers the previous step read (every warp is past them) with step i + STAGES - 1
        gl.thread_barrier()
        nxt = i + STAGES - 1
        _issue(w_desc, x_desc, w_smem, x_smem, bars, nxt % STAGES, nxt, g_first, rb0, nxt < STEPS, NG, NBYTES)
        # this step's group scales were loaded a step ahead; load the next step's now (the last step re-reads)
        sc0 = s_next0
        sc1 = s_next1
        g_next = g_first + gl.minimum(i + 1, STEPS - 1) * NG
        s_next0 = gl.load(st_ptr + g_next * N + rows).to(gl.float32)
        s_next1 = gl.load(st_ptr + (g_next + NG - 1) * N + rows).to(gl.float32)
        st = i % STAGES
        mbarrier.wait(bars.index(st), (i // STAGES) & 1)
        for g in gl.static_range(NG * (1 - STREAM)):
            # inputs 0..63 and 64..127 of group g: words [RB, 128] (lane L's 4 words at 4 L), x^T [64, BLOCK_M];
            # two independent accumulations (shorter MMA dependency chains), summed before the group scale
            ws_ = w_smem.index(st)
            xb0 = x_smem.index(st * 2 * NG + 2 * g).permute((1, 0)).load(B_L)
            xb1 = x_smem.index(st * 2 * NG + 2 * g + 1).permute((1, 0)).load(B_L)
            p0 = mma_v2(_dequant_a(ws_.slice(2 * g, 1, dim=1).load(W_L), zc, RB, A_L, ASM), xb0,
                        gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA))
            p1 = mma_v2(_dequant_a(ws_.slice(2 * g + 1, 1, dim=1).load(W_L), zc, RB, A_L, ASM), xb1,
                        gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA))
            if GSUM == 2:  # sum_k (128 + u) x + sum_k (-136) x on the tensor cores: the constant operand is exact
                p0 = mma_v2(gl.full([BLOCK_N, 64], -136.0, gl.bfloat16, A_L), xb0, p0)
                p1 = mma_v2(gl.full([BLOCK_N, 64], -136.0, gl.bfloat16, A_L), xb1, p1)
            part = p0 + p1
            if GSUM == 1:  # sum_k (128 + u) x - (128 + 8) sum_k x = sum_k (u - 8) x
                xsum = gl.sum(xb0.to(gl.float32), axis=0) + gl.sum(xb1.to(gl.float32), axis=0)
                part = part - 136.0 * gl.convert_layout(xsum, COLS)[None, :]
            if g == 0:
                acc += part * sc0[:, None]
            else:
                acc += part * sc1[:, None]

        if STREAM:  # the streaming twin: the same loads and pipeline, one integer add a word, no dequantization
            for c in gl.static_range(2 * NG):
                sink += w_smem.index(st).slice(c, 1, dim=1).load(W_L)

    for s in gl.static_range(STAGES):
        mbarrier.invalidate(bars.index(s))
    if STREAM:
        acc += gl.sum(gl.sum(gl.sum(sink, axis=2), axis=1), axis=0).to(gl.float32)
    _store_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, gl.arange(0, BLOCK_M, layout=COLS), pid_n, pid_s, M, N, SPLIT,
                BLOCK_N, BLOCK_M, MMA)


@gluon.jit
def _store_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, cols, pid_n, pid_s, M, N, SPLIT, BLOCK_N: gl.constexpr,
                BLOCK_M: gl.constexpr, MMA: gl.constexpr):
    """acc [BLOCK_N weight rows, BLOCK_M activation rows] to out [M, N]; with split-K through the fp32 workspace,
    summed by the tile's last program (a counter it resets, so graph replays reuse it)."""
    offs = cols[None, :] * N + rows[:, None]
    mask = (cols < M)[None, :] & (rows < N)[:, None]
    if SPLIT == 1:
        gl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        gl.store(ws_ptr + pid_s * M * N + offs, acc, mask=mask)
        gl.thread_barrier()
        cnt = cnt_ptr + pid_n
        done = gl.atomic_add(cnt, 1, sem="acq_rel")
        if done == SPLIT - 1:
            total = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
            for sp in range(SPLIT):
                total += gl.load(ws_ptr + sp * M * N + offs, mask=mask, other=0.0, cache_modifier=".cg")
            gl.store(out_ptr + offs, total.to(out_ptr.dtype.element_ty), mask=mask)
            gl.atomic_xchg(cnt, 0)


@gluon.jit
def _ws_producer(w_desc, x_desc, w_smem, x_smem, ready, empty, g_first, rb0, STEPS, STAGES: gl.constexpr,
                 NBYTES: gl.constexpr):
    """Warp-specialized loads (one warp): each K step's words and x into the next free buffer, STAGES ahead."""
    for i in range(STEPS):
        st = i % STAGES
        mbarrier.wait(empty.index(st), ((i // STAGES) & 1) ^ 1)  # barriers start with phase 1 complete
        _issue(w_desc, x_desc, w_smem, x_smem, ready, st, i, g_first, rb0, True, 1, NBYTES)


@gluon.jit
def _ws_consumer(w_smem, x_smem, ready, empty, st_ptr, N, rows, g_first, STEPS,
                 BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, MMA: gl.constexpr,
                 A_L: gl.constexpr, B_L: gl.constexpr, W_L: gl.constexpr):
    """Warp-specialized compute: take a step's words and x into registers, free the buffer at once, then dequantize
    and multiply while the producer refills it."""
    RB: gl.constexpr = BLOCK_N // 16
    acc = gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA)
    zc = gl.full([RB, 1, 128], 0x43084308, gl.int32, W_L)  # the bf16 pair (136, 136): magic 128 + 8
    s_next = gl.load(st_ptr + g_first * N + rows).to(gl.float32)
    for i in range(STEPS):
        sc = s_next
        s_next = gl.load(st_ptr + (g_first + gl.minimum(i + 1, STEPS - 1)) * N + rows).to(gl.float32)
        st = i % STAGES
        mbarrier.wait(ready.index(st), (i // STAGES) & 1)
        w0 = w_smem.index(st).slice(0, 1, dim=1).load(W_L)
        w1 = w_smem.index(st).slice(1, 1, dim=1).load(W_L)
        xb0 = x_smem.index(2 * st).permute((1, 0)).load(B_L)
        xb1 = x_smem.index(2 * st + 1).permute((1, 0)).load(B_L)
        fence_async_shared()
        mbarrier.arrive(empty.index(st), count=1)
        p0 = mma_v2(_dequant_a(w0, zc, RB, A_L, _WORD_ASM), xb0, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA))
        p1 = mma_v2(_dequant_a(w1, zc, RB, A_L, _WORD_ASM), xb1, gl.zeros([BLOCK_N, BLOCK_M], gl.float32, MMA))
        acc += (p0 + p1) * sc[:, None]
    return (acc,)


@gluon.jit
def _mma_ws_kernel(
    x_desc, w_desc, st_ptr, out_ptr, ws_ptr, cnt_ptr,
    M, N, STEPS, SPLIT,
    BLOCK_N: gl.constexpr, BLOCK_M: gl.constexpr, STAGES: gl.constexpr, num_warps: gl.constexpr,
):
    """_mma_kernel (one group a step) with a producer warp issuing the TMA copies: the compute warps never wait for
    each other, and a buffer is refilled as soon as its data is in registers."""
    RB: gl.constexpr = BLOCK_N // 16
    MMA: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[num_warps, 1], instr_shape=[16, 8])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA, k_width=2)
    B_L: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=MMA, k_width=2)
    W_L: gl.constexpr = gl.BlockedLayout([1, 1, 4], [1, 1, 32], [num_warps, 1, 1], [2, 1, 0])
    ROWS: gl.constexpr = gl.SliceLayout(1, MMA)
    COLS: gl.constexpr = gl.SliceLayout(0, MMA)
    NBYTES: gl.constexpr = 2 * RB * 128 * 4 + 2 * BLOCK_M * 64 * 2
    pid_n = gl.program_id(0)
    pid_s = gl.program_id(1)
    rb0 = pid_n * RB
    g_first = pid_s * STEPS
    rows = pid_n * BLOCK_N + gl.arange(0, BLOCK_N, layout=ROWS)
    w_smem = gl.allocate_shared_memory(gl.int32, [STAGES, RB, 2, 128], w_desc.layout)
    x_smem = gl.allocate_shared_memory(gl.bfloat16, [STAGES * 2, BLOCK_M, 64], x_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    acc = gl.warp_specialize(
        [(_ws_consumer, (w_smem, x_smem, ready, empty, st_ptr, N, rows, g_first, STEPS, BLOCK_N, BLOCK_M, STAGES,
                         MMA, A_L, B_L, W_L)),
         (_ws_producer, (w_desc, x_desc, w_smem, x_smem, ready, empty, g_first, rb0, STEPS, STAGES, NBYTES))],
        [1], [24])[0]
    _store_tile(acc, out_ptr, ws_ptr, cnt_ptr, rows, gl.arange(0, BLOCK_M, layout=COLS), pid_n, pid_s, M, N, SPLIT,
                BLOCK_N, BLOCK_M, MMA)


def w4a16_mma(
    x: torch.Tensor,
    words: torch.Tensor,
    scales_t: torch.Tensor,
    *,
    ng: int = 1,
    block_n: int = 64,
    block_m: int = 8,
    split: int = 1,
    stages: int = 4,
    num_warps: int = 4,
    gsum: int = 0,
    stream: bool = False,
    warp_specialize: bool = False,
    maxnreg: int = 80,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ ((u - 8) * s)^T for x [M <= 16, K] bf16, mma_pack's words [N/16, K/64, 128], scales transposed to
    [K/128, N] (symmetric int4, group 128). stream=True runs the streaming twin (same loads, no arithmetic; a timing
    probe whose output is meaningless)."""
    k = x.shape[-1]
    n = words.shape[0] * 16
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    if m > block_m or ng > 2 or n % block_n or k % (GROUP * ng) or (k // GROUP // ng) % split:
        raise ValueError(f"w4a16_mma: M={m} N={n} K={k} does not tile with block_m={block_m} block_n={block_n} "
                         f"ng={ng} split={split}")
    result = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device) if out is None else out
    steps = k // GROUP // ng // split
    w_layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=3)
    w_desc = TensorDescriptor.from_tensor(words, [block_n // 16, 2 * ng, 128], w_layout)
    x_desc = TensorDescriptor.from_tensor(x2, [block_m, 64], gl.NVMMASharedLayout.get_default_for([block_m, 64],
                                                                                                  gl.bfloat16))
    ws = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else result
    cnt = _counters(x.device, n // block_n)
    grid = (n // block_n, split)
    if warp_specialize:
        if ng != 1 or gsum or stream:
            raise ValueError("w4a16_mma: warp_specialize takes one group a step (ng=1), no gsum / stream")
        _mma_ws_kernel[grid](x_desc, w_desc, scales_t, result, ws, cnt, m, n, steps, split,
                             BLOCK_N=block_n, BLOCK_M=block_m, STAGES=stages, num_warps=num_warps, maxnreg=maxnreg)
        return result
    _mma_kernel[grid](x_desc, w_desc, scales_t, result, ws, cnt, m, n, steps, split,
                      BLOCK_N=block_n, BLOCK_M=block_m, NG=ng, STAGES=stages, GSUM=gsum, STREAM=stream,
                      num_warps=num_warps)
    return result
