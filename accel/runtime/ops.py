"""The kernel ops accel knows, each with its portable reference and a generator of test inputs.

A backend's kernel for an op must match the reference on the op's inputs within its tolerance; the
conformance kit (accel.testing) checks exactly that.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from accel.quantization.activation_quant import ActivationQuantArgs, quantize_activation
from accel.quantization.kernels.reference import dequant_linear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.act_ops import silu_and_mul
from accel.runtime.fused_quant_ops import add_rms_norm_quant, quant_args, rms_norm_quant, silu_and_mul_quant
from accel.runtime.kv_ops import KV_FORMATS, KVTensors, cached_attention, kv_cache_write, kv_dequantize, kv_quantize
from accel.runtime.norm_fold_ops import (
    sum_of_squares,
    w4a16_linear_residual,
    w4a16_linear_rms,
    w4a16_linear_silu_mul,
)
from accel.runtime.norm_ops import add_rms_norm, rms_norm
from accel.runtime.packing import pack_int32, packed_columns, unpack_int32
from accel.runtime.qkv_fold_ops import w4a16_linear_rope_kv
from accel.runtime.rope_kv_ops import rotary_kv_cache_write
from accel.runtime.rope_ops import rotary_embedding

InputMaker = Callable[[torch.Generator, str, torch.dtype], tuple[Any, ...]]


@dataclass(frozen=True)
class OpSpec:
    """One op: name, reference implementation, test inputs, and the tolerance a kernel must meet.

    Most ops return a tensor, and a kernel's output is compared with the reference's. An op that mutates its
    arguments (kv_cache_write stores into the cache) sets `observe`: what to compare, read from the arguments after
    the call (e.g. the dequantized stores); it returns None, or a tensor judged with them (rotary_kv_cache_write's
    rotated q). `result` hides the difference."""

    name: str
    reference: Callable[..., torch.Tensor | tuple[torch.Tensor, ...] | None]
    make_inputs: InputMaker
    rtol: float
    atol: float
    doc: str
    # More input sets a kernel must also match on (an op whose arguments select a path, e.g. a KV cache format).
    variants: tuple[InputMaker, ...] = ()
    # A mutating op: the tensor to compare, computed from its arguments after the call (after its output, if any).
    observe: Callable[[tuple[Any, ...]], torch.Tensor] | None = None
    # An op whose outputs are not compared as they are (quantized codes and their scales): the tensor to compare,
    # computed from the outputs and the arguments.
    judge: Callable[[Any, tuple[Any, ...]], torch.Tensor] | None = None

    @property
    def input_makers(self) -> tuple[InputMaker, ...]:
        """make_inputs, then every variant: the conformance kit checks a kernel on each."""
        return (self.make_inputs, *self.variants)

    def result(self, impl: Callable[..., Any], args: tuple[Any, ...]) -> torch.Tensor:
        """What a kernel is judged on: impl(*args) (`judge` of it, where the op sets one); for a mutating op,
        `observe` of a clone of the arguments that impl ran on, so `args` stay as made and the reference and a kernel
        each start from the same inputs (preceded by impl's output where it returns one, flattened to float32)."""
        if self.observe is None:
            out = impl(*args)
            assert out is not None, f"{self.name}: returned None, but the op declares no `observe`"
            if self.judge is not None:
                return self.judge(out, args)
            if isinstance(out, tuple):  # several outputs (rotary_embedding's q and k): judged as one, flattened
                return torch.cat([part.reshape(-1) for part in out])
            return out
        fresh = tuple(arg.clone() if isinstance(arg, torch.Tensor) else arg for arg in args)
        out = impl(*fresh)
        observed = self.observe(fresh)
        if out is None:
            return observed
        return torch.cat([out.reshape(-1).float(), observed.reshape(-1).float()])


def _dequant_linear_inputs(gen: torch.Generator, device: str, dtype: torch.dtype) -> tuple[Any, ...]:
    # Odd shapes on purpose: in_features 200 with group 64 leaves a partial last group.
    m, k, n, group = 3, 200, 72, 64
    weight = torch.randn(n, k, generator=gen, dtype=torch.float32)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=group))
    x = torch.randn(m, k, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    return (x, qw.q.to(device), qw.scale.to(device), qw.zero_point.to(device), group)  # type: ignore[union-attr]


def w4a16_weight(
    k: int,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """W = (q - zp) * s in float32 [N, K] from w4a16_linear's weight arguments (its docstring), for in_features K."""
    n = weight_packed.shape[0]
    groups = weight_scale.shape[1]
    g = group_size if group_size > 0 else k
    if weight_packed.shape[1] != packed_columns(k, 4) or weight_scale.shape[0] != n or groups != -(-k // g):
        raise ValueError(
            f"w4a16_linear: packed {tuple(weight_packed.shape)}, scale {tuple(weight_scale.shape)} do not fit "
            f"in_features {k} with group_size {group_size}"
        )
    q = unpack_int32(weight_packed, 4, (n, k))
    cols = torch.arange(k, device=q.device) // g
    weight = q.to(torch.float32)
    if weight_zero_point is not None:
        weight = weight - weight_zero_point.to(torch.float32)[:, cols]
    return weight * weight_scale.to(torch.float32)[:, cols]


def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """y = x @ W^T with W = (q - zp) * s, the 4-bit codes q stored packed (compressed-tensors pack-quantized).

    x: [..., K] (fp16/bf16; fp32 works too); weight_packed: int32 [N, ceil(K/8)], code i of a row at bits
    [4i, 4i+4) offset by 8; weight_scale: [N, ceil(K/g)] in x's dtype; weight_zero_point: int8 [N, ceil(K/g)]
    (signed, unpacked) or None for symmetric; group_size g (<= 0: one group per row). W is dequantized in
    float32, the product taken in float32 and cast to x's dtype.
    """
    weight = w4a16_weight(x.shape[-1], weight_packed, weight_scale, weight_zero_point, group_size)
    return torch.nn.functional.linear(x.to(torch.float32), weight).to(x.dtype)


def w4a16_sparse24_linear(
    x: torch.Tensor,
    values_packed: torch.Tensor,
    indices: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
) -> torch.Tensor:
    """y = x @ W^T for a 2:4-sparse W4A16 weight in accel's compact N:M form (accel.sparsity.storage, layout nm).

    Each group of 4 inputs keeps 2 weights: values_packed int32 [N, K/16] holds the kept 4-bit codes in input
    order, packed like weight_packed (8 a word, offset by 8); indices uint8 [N, K/8] holds each kept code's
    position in its group in 2 bits, least significant first (value v at bits [2v, 2v + 2) of the row).
    W[n, 4g + idx] = (q - zp) * s for the kept codes, 0 elsewhere; float32 math as w4a16_linear.
    """
    n, k = values_packed.shape[0], x.shape[-1]
    g = group_size if group_size > 0 else k
    kept = k // 2
    if (
        k % 16
        or values_packed.shape[1] != k // 16
        or tuple(indices.shape) != (n, k // 8)
        or indices.dtype != torch.uint8
        or weight_scale.shape[0] != n
        or weight_scale.shape[1] != -(-k // g)
    ):
        raise ValueError(
            f"w4a16_sparse24_linear: values {tuple(values_packed.shape)}, indices {indices.dtype} "
            f"{tuple(indices.shape)}, scale {tuple(weight_scale.shape)} do not fit in_features {k} (a multiple of "
            f"16) with group_size {group_size}"
        )
    q = unpack_int32(values_packed, 4, (n, kept)).to(torch.float32)  # [N, K/2]
    bits = (indices.to(torch.int64)[..., None] >> torch.arange(0, 8, 2, device=indices.device)) & 3  # [N, K/8, 4]
    cols = torch.arange(kept, device=q.device) // 2 * 4 + bits.reshape(n, kept)  # input position of each code
    groups = cols // g
    if weight_zero_point is not None:
        q = q - weight_zero_point.to(torch.float32).gather(1, groups)
    kept_w = q * weight_scale.to(torch.float32).gather(1, groups)
    weight = torch.zeros(n, k, dtype=torch.float32, device=q.device).scatter_(1, cols, kept_w)
    return torch.nn.functional.linear(x.to(torch.float32), weight).to(x.dtype)


def _w4a16_sparse24_inputs(gen: torch.Generator, device: str, dtype: torch.dtype) -> tuple[Any, ...]:
    # K = 208 with group 64 leaves a partial last group; N = 76 is off every kernel block; asymmetric.
    m, k, n, group = 3, 208, 76, 64
    weight = torch.randn(n, k, generator=gen, dtype=torch.float32)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=group))
    keep = torch.rand(n, k // 4, 4, generator=gen).argsort(dim=2)[..., :2].sort(dim=2).values  # [N, K/4, 2]
    codes = qw.q.reshape(n, k // 4, 4).gather(2, keep).reshape(n, k // 2)
    idx = keep.reshape(n, k // 8, 4)
    indices = (idx[..., 0] | idx[..., 1] << 2 | idx[..., 2] << 4 | idx[..., 3] << 6).to(torch.uint8)
    x = torch.randn(m, k, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    scale = qw.scale.to(device=device, dtype=dtype)
    return (x, pack_int32(codes, 4).to(device), indices.to(device), scale, qw.zero_point.to(device), group)  # type: ignore[union-attr]


def _w4a16_linear_inputs(gen: torch.Generator, device: str, dtype: torch.dtype) -> tuple[Any, ...]:
    # K = 200 with group 64 leaves a partial last group (K must be a multiple of 8 to pack into int32 words);
    # N = 76 is not a multiple of any kernel block; asymmetric, so the zero-point path runs too.
    m, k, n, group = 5, 200, 76, 64
    weight = torch.randn(n, k, generator=gen, dtype=torch.float32)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=group))
    x = torch.randn(m, k, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    packed = pack_int32(qw.q, 4).to(device)
    scale = qw.scale.to(device=device, dtype=dtype)
    return (x, packed, scale, qw.zero_point.to(device), group)  # type: ignore[union-attr]


def _norm_fold_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    m: int,
    k: int,
    n: int,
    residual: bool,
    symmetric: bool,
    parts: int = 1,
) -> tuple[Any, ...]:
    # w4a16_linear's weights (group 64 over K = 200 leaves a partial last group; N off every block), then for the
    # residual op a residual stream and the next norm's weight (rows of x and of the residual of different
    # magnitudes, a weight around 1 with spread); for the rms op x = h * w of an h whose rows span 1e-2 .. 1e2, and
    # h's sums of squares in `parts` partial sums (K split into equal runs), as a kernel's producer leaves them.
    group = 64
    weight = torch.randn(n, k, generator=gen, dtype=torch.float32)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=group))
    packed = pack_int32(qw.q, 4).to(device)
    scale = qw.scale.to(device=device, dtype=dtype)
    zero = None if symmetric else qw.zero_point.to(device)  # type: ignore[union-attr]
    mags = torch.logspace(-2, 2, m).reshape(m, 1)
    if residual:
        # x @ W^T of rows ~0.01 .. 1 over a residual ~1: h's elements within a few units, so where the two cancel,
        # one ulp of the linear's output (which a kernel may round the other way) stays inside atol
        x = (torch.randn(m, k, generator=gen) * mags / 1e2).to(device=device, dtype=dtype)
        res = torch.randn(m, n, generator=gen).to(device=device, dtype=dtype)
        norm_weight = (1.0 + 0.5 * torch.randn(n, generator=gen)).to(device=device, dtype=dtype)
        return (x, packed, scale, zero, group, res, norm_weight)
    h = (torch.randn(m, k, generator=gen) * mags).to(device=device, dtype=dtype)
    norm_weight = (1.0 + 0.5 * torch.randn(k, generator=gen)).to(dtype)
    x = (h.float().cpu() * norm_weight.float()).to(device=device, dtype=dtype)
    ss = sum_of_squares(h.unflatten(-1, (parts, k // parts))).squeeze(-1)  # [m, parts]
    return (x, packed, scale, zero, group, ss, 1e-5)


def _silu_mul_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, m: int, k: int, n: int, symmetric: bool, rms: bool
) -> tuple[Any, ...]:
    # the rms op's inputs (N even: gate and up halves), or with rms=False a plain x and no sums of squares; the scales
    # divided by sqrt(K), so W's entries are ~N(0, 1 / K) as a trained projection's and gate / up come out ~1 as a
    # model's do (at ~|y| = 50 the product amplified one ulp of the gate, which a kernel may round the other way, by
    # |up| past atol where silu(gate) is small)
    x, packed, scale, zero, group, ss, eps = _norm_fold_inputs(
        gen, device, dtype, m=m, k=k, n=n, residual=False, symmetric=symmetric
    )
    scale = (scale.float() / math.sqrt(k)).to(scale.dtype)
    return (x, packed, scale, zero, group, ss if rms else None, eps)


def _residual_judged(out: tuple[torch.Tensor, ...], args: tuple[Any, ...]) -> torch.Tensor:
    """w4a16_linear_residual's (h, h * w, ss) as one tensor: ss by its row sums (P is the kernel's choice)."""
    h, hw, ss = out
    return torch.cat([h.reshape(-1).float(), hw.reshape(-1).float(), ss.sum(-1).reshape(-1) / h.shape[-1]])


def block_sparse_linear(
    x: torch.Tensor,
    blocks: torch.Tensor,
    block_index: torch.Tensor,
    out_features: int,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ b) for a block-sparse W [N, K] given by its kept blocks alone: zero blocks cost no FLOPs or
    bytes (accel.sparsity.storage, layout blocks).

    x: [..., K]; blocks: [nb, br, bc] in x's dtype, block i = W[r*br : (r+1)*br, c*bc : (c+1)*bc] at (r, c) =
    block_index[i] (int32/int64 [nb, 2], the artifact's weight_blocks), zero-padded where an edge block passes N or
    K; bias: [N] or None. y[:, r-block] = sum over kept (r, c) of x[:, c-block] @ B_rc^T: one batched product of
    the kept blocks in x's dtype, the partial sums added per block row in float32, cast once to x's dtype.
    """
    k = x.shape[-1]
    _, br, bc = blocks.shape if blocks.ndim == 3 else (0, 0, 0)
    if (
        not br
        or not bc
        or tuple(block_index.shape) != (blocks.shape[0], 2)
        or blocks.dtype != x.dtype
        or (bias is not None and tuple(bias.shape) != (out_features,))
    ):
        raise ValueError(
            f"block_sparse_linear: blocks {blocks.dtype} {tuple(blocks.shape)}, block_index "
            f"{tuple(block_index.shape)}, bias {None if bias is None else tuple(bias.shape)} do not fit x "
            f"{x.dtype} [..., {k}] and out_features {out_features}: blocks must be [nb, br, bc] in x's dtype, "
            "block_index [nb, 2], bias [out_features]"
        )
    grid_r, grid_c = -(-out_features // br), -(-k // bc)
    x2 = x.reshape(-1, k)  # [M, K]
    m = x2.shape[0]
    if k % bc:  # the edge column block: its padding meets the zero padding of the edge weight blocks
        x2 = torch.nn.functional.pad(x2, (0, grid_c * bc - k))
    rows, cols = block_index.to(torch.int64).unbind(1)  # int64: index_add_ runs several times slower on int32
    xs = x2.reshape(m, grid_c, bc).index_select(1, cols).transpose(0, 1)  # [nb, M, bc]: x's c-block per kept block
    partial = torch.bmm(xs, blocks.transpose(1, 2))  # [nb, M, br]: x_c @ B_rc^T
    acc = partial.new_zeros((grid_r, m, br), dtype=torch.float32).index_add_(0, rows, partial.float())  # [R, M, br]
    y = acc.transpose(0, 1).reshape(m, grid_r * br)[:, :out_features]  # [M, N]
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], out_features)


def block_values(weight: torch.Tensor, block_index: torch.Tensor, block_shape: tuple[int, int]) -> torch.Tensor:
    """block_sparse_linear's `blocks` for W [N, K]: the blocks of `block_shape` at block_index [nb, 2] (block row,
    block column), zero-padded past W's edges: [nb, br, bc]."""
    (n, k), (br, bc) = weight.shape, block_shape
    grid_r, grid_c = -(-n // br), -(-k // bc)
    padded = torch.nn.functional.pad(weight, (0, grid_c * bc - k, 0, grid_r * br - n))
    tiles = padded.reshape(grid_r, br, grid_c, bc).transpose(1, 2)  # [R, C, br, bc]
    index = block_index.to(torch.int64)
    return tiles[index[:, 0], index[:, 1]].contiguous()


def _block_sparse_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    shape: tuple[int, int, int],
    block: tuple[int, int],
    bias: bool,
) -> tuple[Any, ...]:
    # About half the blocks kept at random, the last block row and column always (partial edge blocks when the
    # shape is not a multiple of the block shape).
    m, n, k = shape
    grid_r, grid_c = -(-n // block[0]), -(-k // block[1])
    keep = torch.rand(grid_r, grid_c, generator=gen) < 0.5
    keep[-1, :] |= torch.arange(grid_c) % 2 == 0
    keep[:, -1] = True
    block_index = keep.nonzero().to(torch.int32)  # row-major, as the artifact lists them
    weight = torch.randn(n, k, generator=gen)
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    blocks = block_values(weight, block_index, block)
    x, blocks, b = (None if t is None else t.to(device=device, dtype=dtype) for t in (x, blocks, b))
    return (x, blocks, block_index.to(device), n, b)


def _per_channel(weight_scale: torch.Tensor, n: int, op: str) -> torch.Tensor:
    """A weight scale [N], [N, 1] (per channel) or [1], [1, 1] (per tensor) as float32 [N] or [1]."""
    flat = weight_scale.reshape(-1)
    if flat.numel() not in (1, n):
        raise ValueError(f"{op}: weight_scale {tuple(weight_scale.shape)} must be [N], [N, 1] or [1] with N = {n}")
    return flat.to(torch.float32)


def _scaled_output(
    acc: torch.Tensor, scale_x: torch.Tensor, scale_w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> torch.Tensor:
    """acc * s_x * s_w (+ b) in float32, cast once to the output dtype."""
    y = acc.to(torch.float32) * scale_x * scale_w
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(dtype)


def w8a8_int8_linear(
    x: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """y = (q_x @ q_w^T) * s_x * s_w (+ b): W8A8 int8 with dynamic per-token symmetric activation quantization.

    x: [..., K] (fp16/bf16/fp32); s_x = max(max|x_token|, 1e-12) / 127 per token, q_x = clamp(round(x / s_x),
    -127, 127) (activation_quant's convention, so QuantLinear with int8 weights and dynamic per-token int8
    activations computes the same function); weight_q: int8 [N, K]; weight_scale: [N], [N, 1] (per channel) or
    [1] (per tensor), any float dtype; bias: [N] or None. The integer products are summed exactly (float64 holds
    every int32 sum, as an int32 accumulator would), scaled in float32 and cast once to x's dtype: [..., N].
    """
    _, k = weight_q.shape
    if x.shape[-1] != k or weight_q.dtype != torch.int8:
        raise ValueError(
            f"w8a8_int8_linear: x [..., {x.shape[-1]}] and int8 weight [N, K] = {tuple(weight_q.shape)} "
            f"({weight_q.dtype}) do not fit"
        )
    q_x, scale_x = quantize_activation(x, ActivationQuantArgs(type="int"))  # [..., K] int8, [..., 1] f32
    return _w8a8_product(q_x, scale_x, weight_q, weight_scale, bias, x.dtype, "w8a8_int8_linear")


def fp8_linear(
    x: torch.Tensor,
    weight_fp8: torch.Tensor,
    weight_scale: torch.Tensor,
    input_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = (q_x @ q_w^T) * s_x * s_w (+ b): fp8 e4m3 W8A8, as vLLM's fp8 linear.

    Activations: dynamic per token, s_x = max(max|x_token|, 1e-12) / 448, when input_scale is None; else static
    per tensor, s_x = input_scale ([1] or [], float). q_x = fp8(clamp(x / s_x, -448, 448)) (activation_quant's
    convention). weight_fp8: float8_e4m3fn [N, K]; weight_scale: [N], [N, 1] or [1]; bias: [N] or None. Every
    product of two e4m3 values, and their sum over K < 2^17, is exact in float64; the result is scaled in
    float32 and cast once to x's dtype: [..., N].
    """
    _, k = weight_fp8.shape
    if x.shape[-1] != k or weight_fp8.dtype != torch.float8_e4m3fn:
        raise ValueError(
            f"fp8_linear: x [..., {x.shape[-1]}] and e4m3 weight [N, K] = {tuple(weight_fp8.shape)} "
            f"({weight_fp8.dtype}) do not fit"
        )
    if input_scale is None:
        args = ActivationQuantArgs(type="float")
    else:
        args = ActivationQuantArgs(type="float", strategy="tensor", dynamic=False)
        input_scale = input_scale.reshape(-1)[:1]
    q_x, scale_x = quantize_activation(x, args, input_scale)  # [..., K] e4m3, [..., 1] or [1] f32
    return _w8a8_product(q_x, scale_x, weight_fp8, weight_scale, bias, x.dtype, "fp8_linear")


def _w8a8_product(
    q_x: torch.Tensor,
    scale_x: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    dtype: torch.dtype,
    op: str,
) -> torch.Tensor:
    """The GEMM half of the W8A8 ops (w8a8_scaled_mm's computation; the linear ops' after quantize_activation):
    (q_x @ weight^T) summed exactly in float64, times scale_x (broadcast against [..., 1]) and the per-channel or
    per-tensor weight scale in float32, plus the bias, cast once to dtype. `op` names the caller in errors."""
    acc = torch.matmul(q_x.to(torch.float64), weight.to(torch.float64).T)  # [..., N], exact
    return _scaled_output(acc, scale_x, _per_channel(weight_scale, weight.shape[0], op), bias, dtype)


def check_w8a8_scaled_mm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> None:
    """A ValueError naming the argument that does not fit w8a8_scaled_mm's contract (its docstring)."""
    op = "w8a8_scaled_mm"
    if x_codes.dtype not in (torch.int8, torch.float8_e4m3fn) or x_codes.ndim < 1:
        raise ValueError(
            f"{op}: x_codes must be int8 or float8_e4m3fn codes [..., K], got {x_codes.dtype} {tuple(x_codes.shape)}"
        )
    k = x_codes.shape[-1]
    if weight.ndim != 2 or weight.dtype != x_codes.dtype or weight.shape[1] != k:
        raise ValueError(
            f"{op}: weight {weight.dtype} {tuple(weight.shape)} must be [N, K] of x_codes' dtype {x_codes.dtype} "
            f"with K = {k}"
        )
    lead = tuple(x_codes.shape[:-1])
    if x_scale.dtype != torch.float32 or tuple(x_scale.shape) not in (lead, (*lead, 1), (1,)):
        raise ValueError(
            f"{op}: x_scale {x_scale.dtype} {tuple(x_scale.shape)} must be float32 [..., 1] or [...], one scale per "
            f"row of x_codes {tuple(x_codes.shape)}, or [1] for all rows"
        )
    n = weight.shape[0]
    _per_channel(weight_scale, n, op)
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != n or not bias.is_floating_point()):
        raise ValueError(f"{op}: bias {bias.dtype} {tuple(bias.shape)} must be floating point [N], N = {n}")
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point or out_dtype.itemsize < 2:
        raise ValueError(f"{op}: out_dtype must be a floating-point dtype of 16 bits or more, got {out_dtype}")


def w8a8_scaled_mm(
    x_codes: torch.Tensor,
    x_scale: torch.Tensor,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """y = (x_codes @ weight^T) * s_x * s_w (+ b) in out_dtype: the GEMM half of w8a8_int8_linear and fp8_linear,
    for activations already quantized (by rms_norm_quant, add_rms_norm_quant or silu_and_mul_quant; or
    quantize_activation), so that w8a8_int8_linear(x, ...) is bit for bit
    w8a8_scaled_mm(*quantize_activation(x, int8 per token), ..., x.dtype), and fp8_linear likewise.

    x_codes: int8 or float8_e4m3fn [..., K]; x_scale: float32 [..., 1] or [...] (a scale per row), or [1] (one for
    every row: a static per-tensor scale); weight: [N, K] of x_codes' dtype; weight_scale: [N], [N, 1] (per channel)
    or [1] (per tensor), any float dtype; bias: [N] or None; out_dtype: a floating-point dtype. The products are
    summed exactly (float64 holds every int8 or e4m3 product sum over K < 2^17), scaled in float32 and cast once to
    out_dtype: [..., N].
    """
    check_w8a8_scaled_mm(x_codes, x_scale, weight, weight_scale, bias, out_dtype)
    lead = x_codes.shape[:-1]
    scale_x = x_scale if x_scale.shape == (1,) else x_scale.reshape(*lead, 1)
    return _w8a8_product(x_codes, scale_x, weight, weight_scale, bias, out_dtype, "w8a8_scaled_mm")


def _w8a8_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fp8: bool, static: bool = False
) -> tuple[Any, ...]:
    # K = 200 and N = 76 fit no kernel block; per-channel weight scales; a bias; rows of very different sizes.
    m, k, n = 5, 200, 76
    weight = torch.randn(n, k, generator=gen) * 0.05
    args = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel", type="float" if fp8 else "int")
    qw = quantize(weight, args)
    x = torch.randn(m, k, generator=gen) * torch.logspace(-1, 1, m)[:, None]
    bias = torch.randn(n, generator=gen) * 0.1
    x, bias = x.to(device=device, dtype=dtype), bias.to(device=device, dtype=dtype)
    q, scale = qw.q.to(device), qw.scale.to(device)
    if not fp8:
        return (x, q, scale, bias)
    input_scale = (x.float().abs().amax() / 448 * 1.25).reshape(1) if static else None
    return (x, q, scale, input_scale, bias)


def _cached_attention_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fmt: str, new_tokens: int = 1
) -> tuple[Any, ...]:
    # GQA 4 (8 query heads over 2 KV heads); ragged rows, one of them full and one holding only the new tokens;
    # positions past a row's length hold data that must be ignored. new_tokens > 1 is verification / a chunk.
    b, hq, hkv, cap, d = 3, 8, 2, 40, 64
    seq_lens = torch.tensor([17, cap, new_tokens], dtype=torch.int32)
    q = torch.randn(b, hq, new_tokens, d, generator=gen)
    keys, values = (torch.randn(b, hkv, cap, d, generator=gen) for _ in range(2))
    if fmt == "none":
        keys, values = keys.to(dtype), values.to(dtype)
    k, v = kv_quantize(keys, fmt), kv_quantize(values, fmt)
    tensors = [q.to(dtype), *k, *v, seq_lens]
    q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, lens = (None if t is None else t.to(device) for t in tensors)
    return (q, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, lens, fmt, 1.0 / math.sqrt(d))


def _kv_cache_write_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fmt: str, new_tokens: int = 1
) -> tuple[Any, ...]:
    # 3 rows written into a store of 4 (row 3 must stay as it was), 2 KV heads, head_dim 96 (int4: 3 groups, not a
    # power of two); ragged positions: row 0 appends after 17 tokens, row 1 from position 0, row 2 ends at the last
    # position, backwards. The stores already hold quantized data, so untouched positions are visible.
    b, rows, h, cap, d = 3, 4, 2, 40, 96
    t = new_tokens
    starts = torch.tensor([17, 0, cap - t])
    positions = starts[:, None] + torch.arange(t)[None, :]
    positions[2] = positions[2].flip(0)
    magnitude = torch.logspace(-1, 1, b * h * t).reshape(b, h, t, 1)  # tokens of very different ranges
    k, v = (torch.randn(b, h, t, d, generator=gen) * magnitude for _ in range(2))
    old_k, old_v = (torch.randn(rows, h, cap, d, generator=gen) for _ in range(2))
    if fmt == "none":
        old_k, old_v = old_k.to(dtype), old_v.to(dtype)
    tensors = [k.to(dtype), v.to(dtype), positions, *kv_quantize(old_k, fmt), *kv_quantize(old_v, fmt)]
    k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero = (
        None if x is None else x.to(device) for x in tensors
    )
    return (k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)


def _kv_cache_write_observe(args: tuple[Any, ...]) -> torch.Tensor:
    """The whole K and V stores after a write, dequantized: [2, B', H, S, D] float32."""
    return _dequantized_stores(*args[3:])


def _dequantized_stores(
    k_codes: torch.Tensor,
    k_scale: torch.Tensor | None,
    k_zero: torch.Tensor | None,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor | None,
    v_zero: torch.Tensor | None,
    fmt: str,
) -> torch.Tensor:
    """Whole K and V stores in `fmt`, dequantized: [2, B', H, S, D] float32."""
    keys = kv_dequantize(KVTensors(k_codes, k_scale, k_zero), fmt)
    values = kv_dequantize(KVTensors(v_codes, v_scale, v_zero), fmt)
    return torch.stack([keys, values])


def _rms_norm_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    shape: tuple[int, ...],
    eps: float,
    weight_dtype: torch.dtype | None = None,
) -> tuple[Any, ...]:
    # Rows of very different magnitudes (1e-2 .. 1e2: the normalization must undo each); a weight around 1 with
    # spread, as trained norms are; hidden sizes off every power of two.
    rows = math.prod(shape[:-1])
    x = torch.randn(*shape, generator=gen) * torch.logspace(-2, 2, rows).reshape(*shape[:-1], 1)
    weight = 1.0 + 0.5 * torch.randn(shape[-1], generator=gen)
    return (x.to(device=device, dtype=dtype), weight.to(device=device, dtype=weight_dtype or dtype), eps)


def _add_rms_norm_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    shape: tuple[int, ...],
    eps: float,
    weight_dtype: torch.dtype | None = None,
) -> tuple[Any, ...]:
    # rms_norm's inputs as the update x, and a residual stream whose rows run the other way (1e1 .. 1e-1): rows
    # where either dominates the sum, so h's rounding to x's dtype shows.
    x, weight, eps = _rms_norm_inputs(gen, device, dtype, shape=shape, eps=eps, weight_dtype=weight_dtype)
    rows = math.prod(shape[:-1])
    residual = torch.randn(*shape, generator=gen) * torch.logspace(1, -1, rows).reshape(*shape[:-1], 1)
    return (x, residual.to(device=device, dtype=dtype), weight, eps)


def _silu_and_mul_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, shape: tuple[int, ...]
) -> tuple[Any, ...]:
    # x [..., 2I]: gates N(0, 3) with every 7th far into silu's tails (|g| to ~60: exp(-g) from ~1e-26 to ~1e26);
    # up rows of different magnitudes (1e-1 .. 1e1).
    *lead, two_i = shape
    rows = math.prod(lead)
    gate = 3.0 * torch.randn(*lead, two_i // 2, generator=gen)
    gate.view(-1)[::7] *= 5.0
    up = torch.randn(*lead, two_i // 2, generator=gen) * torch.logspace(-1, 1, rows).reshape(*lead, 1)
    return (torch.cat([gate, up], -1).to(device=device, dtype=dtype),)


def _rotary_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    shape: tuple[int, int, int, int, int],
    table_batch: int,
    angles: bool = True,
) -> tuple[Any, ...]:
    # q and k as the model makes them: views of one fused qkv projection [B, T, (H + 2 Hkv) D] (strided, not
    # contiguous). angles: cos / sin of real RoPE angles (llama's theta 5e5; each frequency in both halves) at
    # positions in 0 .. 4096, one table for the batch (prefill) or one per row (decode); else independent random
    # values for every element, which a kernel mixing up the halves of the tables cannot match.
    _, t, _, _, d = shape
    q, k, _ = _fused_qkv(gen, device, dtype, shape)
    if angles:
        positions = torch.randint(0, 4096 - t, (table_batch, 1), generator=gen) + torch.arange(t)  # [B|1, T]
        cos, sin = _rope_angles(positions, d)
    else:
        cos, sin = (torch.randn(table_batch, t, d, generator=gen) for _ in range(2))
    cos, sin = (table.to(device=device, dtype=dtype) for table in (cos, sin))
    return (q, k, cos, sin)


def _fused_qkv(
    gen: torch.Generator, device: str, dtype: torch.dtype, shape: tuple[int, int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B, T, H, D], k and v [B, T, Hkv, D] for shape (B, T, H, Hkv, D), as the model makes them: views of one fused
    qkv projection output [B, T, (H + 2 Hkv) D] of N(0, 4^2) values (strided, not contiguous)."""
    b, t, h, hkv, d = shape
    qkv = torch.randn(b, t, (h + 2 * hkv) * d, generator=gen) * 4
    q, k, v = qkv.to(device=device, dtype=dtype).split((h * d, hkv * d, hkv * d), dim=-1)
    return q.view(b, t, h, d), k.view(b, t, hkv, d), v.view(b, t, hkv, d)


def _rope_angles(positions: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [..., D] float32 of the RoPE angles at integer `positions` [...] (llama's theta 5e5, each frequency
    in both halves of head_dim D)."""
    inv_freq = 1.0 / 500000.0 ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
    half = positions[..., None].float() * inv_freq  # [..., D/2]
    angle = torch.cat((half, half), dim=-1)
    return angle.cos(), angle.sin()


def _rotary_kv_cache_write_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fmt: str, new_tokens: int = 1
) -> tuple[Any, ...]:
    # kv_cache_write's positions and stores (3 rows written into a store of 4, 2 KV heads, head_dim 96; ragged and,
    # in row 2, backwards positions; stores already holding quantized data), with q / k / v as views of one fused qkv
    # output (5 query heads: an odd count over the 2 KV heads) and a table per row at the positions written, as a
    # decode step (T = 1) or a verification (T > 1) makes them.
    k_new, _, positions, *stores, _ = _kv_cache_write_inputs(gen, device, dtype, fmt=fmt, new_tokens=new_tokens)
    b, hkv, t, d = k_new.shape
    q, k, v = _fused_qkv(gen, device, dtype, (b, t, 5, hkv, d))
    cos, sin = (table.to(device=device, dtype=dtype) for table in _rope_angles(positions.cpu(), d))
    return (q, k, v, cos, sin, positions, *stores, fmt)


def _rotary_kv_cache_write_observe(args: tuple[Any, ...]) -> torch.Tensor:
    """The whole K and V stores after the write, dequantized: [2, B', Hkv, S, D] float32 (the rotated q, which the op
    returns, comes before it: OpSpec.result)."""
    return _dequantized_stores(*args[6:])


def _linear_rope_kv_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    k: int,
    group: int,
    symmetric: bool,
    rms: bool,
    fmt: str,
    new_tokens: int,
    parts: int = 1,
) -> tuple[Any, ...]:
    # rotary_kv_cache_write's cache side (3 rows written into a store of 4, 2 KV heads, head_dim 96; ragged and, in
    # row 2, backwards positions; stores already holding quantized data; a table per row at the positions written)
    # under a stacked q | k | v W4A16 weight of (5 + 2 * 2) heads x 96 rows over K inputs (N = 864; groups of
    # `group`, K = 200 leaving a partial last one), N(0, 1 / K) as a trained projection's, so y ~ N(0, 1) as a model's
    # q / k / v are. rms: x = h * w of an h whose rows span 1e-2 .. 1e2 and h's sums of squares in `parts` partial
    # sums (w4a16_linear_rms's inputs); else x rows of 1e-1 .. 1e0 (an already normed stream) and ss None.
    k_new, _, positions, *stores, _ = _kv_cache_write_inputs(gen, device, dtype, fmt=fmt, new_tokens=new_tokens)
    b, hkv, t, d = k_new.shape
    heads = 5
    n = (heads + 2 * hkv) * d
    weight = torch.randn(n, k, generator=gen) / math.sqrt(k)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=symmetric, strategy="group", group_size=group))
    packed = pack_int32(qw.q, 4).to(device)
    scale = qw.scale.to(device=device, dtype=dtype)
    zero = None if symmetric else qw.zero_point.to(device)  # type: ignore[union-attr]
    cos, sin = (table.to(device=device, dtype=dtype) for table in _rope_angles(positions.cpu(), d))
    if rms:
        h = torch.randn(b, t, k, generator=gen) * torch.logspace(-2, 2, b * t).reshape(b, t, 1)
        norm_weight = 1.0 + 0.5 * torch.randn(k, generator=gen)
        h = h.to(dtype)
        x = (h.float() * norm_weight.to(dtype).float()).to(device=device, dtype=dtype)
        ss = sum_of_squares(h.unflatten(-1, (parts, k // parts))).squeeze(-1).to(device)  # [B, T, parts]
    else:
        x = (torch.randn(b, t, k, generator=gen) * torch.logspace(-1, 0, b * t).reshape(b, t, 1)).to(device, dtype)
        ss = None
    return (x, packed, scale, zero, group, ss, 1e-5, cos, sin, positions, *stores, fmt, heads)


def _linear_rope_kv_observe(args: tuple[Any, ...]) -> torch.Tensor:
    """The whole K and V stores after the write, dequantized: [2, B', Hkv, S, D] float32 (the rotated q, which the op
    returns, comes before it: OpSpec.result)."""
    return _dequantized_stores(*args[10:17])


def _kv_format_variants(make_inputs: Callable[..., tuple[Any, ...]], new_tokens: int) -> tuple[InputMaker, ...]:
    """A KV cache op's variants: make_inputs in every KV format at T = 1 and T = new_tokens, but ("none", T = 1), the
    op's make_inputs."""
    return tuple(
        functools.partial(make_inputs, fmt=fmt, new_tokens=t)
        for fmt in KV_FORMATS
        for t in (1, new_tokens)
        if (fmt, t) != ("none", 1)
    )


def _zero_first_row(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """args with x's first row all zeros: its scale is the floor, 1e-12 / qmax, and its codes 0."""
    x = args[0].clone()
    x.view(-1, x.shape[-1])[0] = 0
    return (x, *args[1:])


def _rms_norm_quant_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fp8: bool, zero_row: bool = False, **shape_eps: Any
) -> tuple[Any, ...]:
    # rms_norm's inputs (rows of 1e-2 .. 1e2, which the norm evens out; a weight around 1 with spread), then fp8.
    args = (*_rms_norm_inputs(gen, device, dtype, **shape_eps), fp8)
    return _zero_first_row(args) if zero_row else args


def _add_rms_norm_quant_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fp8: bool, zero_row: bool = False, **shape_eps: Any
) -> tuple[Any, ...]:
    # add_rms_norm's inputs (x and residual rows running opposite ways, so either dominates h), then fp8; zero_row:
    # a first row of h all zeros (x = -residual there).
    x, residual, weight, eps = _add_rms_norm_inputs(gen, device, dtype, **shape_eps)
    if zero_row:
        residual = residual.clone()
        residual.view(-1, residual.shape[-1])[0] = -x.reshape(-1, x.shape[-1])[0]
    return (x, residual, weight, eps, fp8)


def _silu_and_mul_quant_inputs(
    gen: torch.Generator, device: str, dtype: torch.dtype, *, fp8: bool, shape: tuple[int, ...], zero_row: bool = False
) -> tuple[Any, ...]:
    # silu_and_mul's inputs (gates into silu's tails; up rows of 1e-1 .. 1e1, so the rows' scales differ), then fp8.
    args = (*_silu_and_mul_inputs(gen, device, dtype, shape=shape), fp8)
    return _zero_first_row(args) if zero_row else args


def _w8a8_scaled_mm_inputs(
    gen: torch.Generator,
    device: str,
    dtype: torch.dtype,
    *,
    fp8: bool,
    lead: tuple[int, ...],
    k: int = 200,
    n: int = 76,
    bias: bool = True,
    flat_scale: bool = False,
    per_tensor_weight: bool = False,
) -> tuple[Any, ...]:
    # Activation codes and scales as quantize_activation makes them from rows of very different sizes (1e-2 .. 1e2,
    # in the kit's dtype), leading dims `lead`; x_scale [..., 1] or (flat_scale) [...]; int8 or e4m3 weights with
    # per-channel or per-tensor scales; K = 200, N = 76 fit no kernel block; the output in the kit's dtype.
    rows = math.prod(lead)
    kind = "float" if fp8 else "int"
    weight = torch.randn(n, k, generator=gen) * 0.05
    strategy = "tensor" if per_tensor_weight else "channel"
    qw = quantize(weight, WeightQuantArgs(num_bits=8, symmetric=True, strategy=strategy, type=kind))
    x = torch.randn(*lead, k, generator=gen) * torch.logspace(-2, 2, rows).reshape(*lead, 1)
    codes, scale = quantize_activation(x.to(dtype), quant_args(fp8))
    b = (torch.randn(n, generator=gen) * 0.1).to(device=device, dtype=dtype) if bias else None
    scale = scale.reshape(lead) if flat_scale else scale
    return (codes.to(device), scale.to(device), qw.q.to(device), qw.scale.to(device), b, dtype)


def _code_steps(codes: torch.Tensor) -> torch.Tensor:
    """Codes as their signed position on the code grid, float32: int8 codes as they are; an e4m3 code as its sign
    times its magnitude bits, so that neighbouring e4m3 values are 1 apart, as neighbouring int8 codes are."""
    if codes.dtype == torch.float8_e4m3fn:
        bits = codes.view(torch.uint8).to(torch.int32)
        return torch.where(bits >= 0x80, -(bits & 0x7F), bits).float()
    return codes.float()


def _relative_steps(got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """2^7 x the relative difference of got from want, elementwise (0 where they are equal): 1 is one bf16 ulp."""
    got64, want64 = got.double(), want.double()
    return torch.where(got64 == want64, 0.0, (got64 - want64) / want64.abs() * 2.0**7).float()


def _quantized_judged(
    reference: Callable[..., tuple[torch.Tensor, ...]], out: tuple[torch.Tensor, ...], args: tuple[Any, ...]
) -> torch.Tensor:
    """What a quantizing op (codes, scale, *more) is judged on (OpSpec.judge), flattened, in steps of 1: its codes
    on the code grid (_code_steps: a code off by one is 1 away), then each row scale and further output (h) as 2^7
    times its relative difference from the reference's on the same arguments (_relative_steps: 2^-7 is 1). For the
    reference itself: its codes, then zeros."""
    codes, scale, *more = out
    want = reference(*args)
    steps = [_relative_steps(got, ref) for got, ref in zip((scale, *more), want[1:], strict=True)]
    return torch.cat([part.reshape(-1) for part in (_code_steps(codes), *steps)])


OPS: dict[str, OpSpec] = {
    "dequant_linear": OpSpec(
        name="dequant_linear",
        reference=dequant_linear,
        make_inputs=_dequant_linear_inputs,
        rtol=1e-2,
        atol=1e-2,
        doc="x @ ((q - zp) * s)^T with unpacked integer codes, per-channel or per-group scales",
    ),
    "w4a16_linear": OpSpec(
        name="w4a16_linear",
        reference=w4a16_linear,
        make_inputs=_w4a16_linear_inputs,
        rtol=1e-2,
        atol=1e-2,
        doc="x @ ((q - zp) * s)^T with 4-bit codes packed in int32 (pack-quantized), per-group scales/zero points",
    ),
    "w4a16_linear_residual": OpSpec(
        name="w4a16_linear_residual",
        reference=w4a16_linear_residual,
        # Rows 5 (spread magnitudes), asymmetric; a decode row, symmetric, at a shape with full 128-groups.
        make_inputs=functools.partial(_norm_fold_inputs, m=5, k=200, n=76, residual=True, symmetric=False),
        variants=(functools.partial(_norm_fold_inputs, m=1, k=512, n=256, residual=True, symmetric=True),),
        judge=_residual_judged,  # h, h * w, and mean(h^2) per row from the partial sums
        rtol=1e-2,
        atol=1e-2,
        doc="a W4A16 linear with the residual add and the next RMSNorm's weight in its epilogue: (h, h * norm_weight, "
        "ss) with h = x @ W^T + residual and ss float32 partial sums of h^2 per row (norm_fold_ops)",
    ),
    "w4a16_linear_rms": OpSpec(
        name="w4a16_linear_rms",
        reference=w4a16_linear_rms,
        make_inputs=functools.partial(_norm_fold_inputs, m=5, k=200, n=76, residual=False, symmetric=False),
        variants=(
            functools.partial(_norm_fold_inputs, m=1, k=512, n=256, residual=False, symmetric=True, parts=8),
        ),
        rtol=1e-2,
        atol=1e-2,
        doc="a W4A16 linear on x = h * (RMSNorm weight) scaled per row by 1 / sqrt(sum(ss) / K + eps), ss partial "
        "sums of h^2: rms_norm(h) @ W^T with the norm folded in (norm_fold_ops)",
    ),
    "w4a16_linear_silu_mul": OpSpec(
        name="w4a16_linear_silu_mul",
        reference=w4a16_linear_silu_mul,
        # gate | up of 2 x 38 rows over K = 200 (groups of 64), after a folded norm; a decode row without one.
        make_inputs=functools.partial(_silu_mul_inputs, m=5, k=200, n=76, symmetric=False, rms=True),
        variants=(functools.partial(_silu_mul_inputs, m=1, k=512, n=256, symmetric=True, rms=False),),
        # silu_and_mul's caveat on top of the linear's (another exp: a rare element one ulp of x's dtype away)
        rtol=1e-2,
        atol=1e-2,
        doc="SwiGLU folded into the stacked gate | up W4A16 linear: silu(y[..., :I]) * y[..., I:] with y = x @ W^T, "
        "or w4a16_linear_rms's y given partial sums of squares (norm_fold_ops)",
    ),
    "w4a16_sparse24_linear": OpSpec(
        name="w4a16_sparse24_linear",
        reference=w4a16_sparse24_linear,
        make_inputs=_w4a16_sparse24_inputs,
        rtol=1e-2,
        atol=1e-2,
        doc="x @ W^T for a 2:4-sparse W4A16 weight: kept 4-bit codes packed in int32 and 2-bit positions",
    ),
    "block_sparse_linear": OpSpec(
        name="block_sparse_linear",
        reference=block_sparse_linear,
        # N = 76, K = 200 leave partial edge blocks of 16x32; then decode (M = 1) on whole 32x32 blocks.
        make_inputs=functools.partial(_block_sparse_inputs, shape=(3, 76, 200), block=(16, 32), bias=True),
        variants=(functools.partial(_block_sparse_inputs, shape=(1, 96, 128), block=(32, 32), bias=False),),
        rtol=1e-2,
        atol=1e-2,
        doc="x @ W^T for a block-sparse W: kept blocks [nb, br, bc] and their (block row, block column)",
    ),
    "w8a8_int8_linear": OpSpec(
        name="w8a8_int8_linear",
        reference=w8a8_int8_linear,
        make_inputs=functools.partial(_w8a8_inputs, fp8=False),
        rtol=1e-2,
        atol=1e-2,
        doc="int8 W8A8: per-token dynamic int8 activations, int32 products, per-channel weight scales",
    ),
    "fp8_linear": OpSpec(
        name="fp8_linear",
        reference=fp8_linear,
        make_inputs=functools.partial(_w8a8_inputs, fp8=True),
        variants=(functools.partial(_w8a8_inputs, fp8=True, static=True),),
        rtol=1e-2,
        atol=1e-2,
        doc="fp8 e4m3 W8A8: per-token dynamic (or static per-tensor) activations, per-channel weight scales",
    ),
    "cached_attention": OpSpec(
        name="cached_attention",
        reference=cached_attention,
        make_inputs=functools.partial(_cached_attention_inputs, fmt="none"),
        variants=_kv_format_variants(_cached_attention_inputs, 3),
        rtol=1e-2,
        atol=1e-2,
        doc="causal GQA attention of T new queries over a static KV cache (none/int8/fp8/int4), ragged lengths",
    ),
    "kv_cache_write": OpSpec(
        name="kv_cache_write",
        reference=kv_cache_write,
        make_inputs=functools.partial(_kv_cache_write_inputs, fmt="none"),
        variants=_kv_format_variants(_kv_cache_write_inputs, 5),
        # Exact: a kernel quantizes as kv_quantize does, bit for bit; one code off is a different cache.
        rtol=0.0,
        atol=0.0,
        doc="quantize new K and V tokens (none/int8/fp8/int4) and store them at their positions of a static KV "
        "cache, in place",
        observe=_kv_cache_write_observe,
    ),
    "rms_norm": OpSpec(
        name="rms_norm",
        reference=rms_norm,
        # Hidden 200 at 3 rows; a decode row of SmolLM2's 576; leading dims [2, 3, H] with an fp32 weight (the
        # product promotes to fp32); 17 rows of 1000.
        make_inputs=functools.partial(_rms_norm_inputs, shape=(3, 200), eps=1e-5),
        variants=(
            functools.partial(_rms_norm_inputs, shape=(1, 576), eps=1e-6),
            functools.partial(_rms_norm_inputs, shape=(2, 3, 576), eps=1e-5, weight_dtype=torch.float32),
            functools.partial(_rms_norm_inputs, shape=(17, 1000), eps=1e-6),
        ),
        # A kernel sums the squares in its own order: ~1e-6 relative in float32 before the cast to x's dtype, so
        # a rare element rounds to the neighbouring bf16 / fp16 value (2^-8 relative), then times the weight.
        rtol=4e-3,
        atol=1e-5,
        doc="RMSNorm over the last dimension: float32 mean of squares and rsqrt, cast to x's dtype, times weight",
    ),
    "rotary_embedding": OpSpec(
        name="rotary_embedding",
        reference=rotary_embedding,
        # A prefill with one table [1, T, D] and odd head counts (5 query heads over 1 KV head); a decode step with a
        # table per row [B, 1, D] at Llama's head_dim 128; head_dim 96 (no power of two) with random tables.
        make_inputs=functools.partial(_rotary_inputs, shape=(2, 3, 5, 1, 64), table_batch=1),
        variants=(
            functools.partial(_rotary_inputs, shape=(3, 1, 8, 2, 128), table_batch=3),
            functools.partial(_rotary_inputs, shape=(2, 4, 3, 3, 96), table_batch=2, angles=False),
        ),
        # Exact: a kernel rounds each product and the sum to q's dtype as torch does (a product of two 16-bit
        # floats is exact in float32), so it computes torch's bits.
        rtol=0.0,
        atol=0.0,
        doc="RoPE on q [B, T, H, D] and k [B, T, Hkv, D] (strided views) in one launch: x * cos + rotate_half(x) * sin "
        "with cos / sin [B or 1, T, D], rounded as torch does",
    ),
    "rotary_kv_cache_write": OpSpec(
        name="rotary_kv_cache_write",
        reference=rotary_kv_cache_write,
        # kv_cache_write's cases (every format, T = 1 and 3, ragged and backwards positions) with q / k / v from one
        # fused qkv output and per-row tables.
        make_inputs=functools.partial(_rotary_kv_cache_write_inputs, fmt="none"),
        variants=_kv_format_variants(_rotary_kv_cache_write_inputs, 3),
        # Exact: rotary_embedding's rounding and kv_cache_write's quantization, each bit for bit.
        rtol=0.0,
        atol=0.0,
        doc="RoPE on q and k fused with the KV cache write: returns q rotated, stores rotated k and v (none/int8/fp8/"
        "int4) at their positions of a static KV cache, in place",
        observe=_rotary_kv_cache_write_observe,
    ),
    "w4a16_linear_rope_kv": OpSpec(
        name="w4a16_linear_rope_kv",
        reference=w4a16_linear_rope_kv,
        # A verification step (T = 3) after a folded norm, asymmetric over K = 200 in groups of 64; a decode step
        # (T = 1) without one, symmetric over K = 512 in groups of 128; a decode step into an int8 cache (a backend's
        # path for a quantized cache, its fallback included), the sums of squares in 8 partial sums.
        make_inputs=functools.partial(
            _linear_rope_kv_inputs, k=200, group=64, symmetric=False, rms=True, fmt="none", new_tokens=3
        ),
        variants=(
            functools.partial(
                _linear_rope_kv_inputs, k=512, group=128, symmetric=True, rms=False, fmt="none", new_tokens=1
            ),
            functools.partial(
                _linear_rope_kv_inputs, k=200, group=64, symmetric=False, rms=True, fmt="int8", new_tokens=1, parts=8
            ),
        ),
        # The linear's tolerance: a kernel accumulates x @ W^T in its own order, so a rare element of y rounds to the
        # neighbouring value of x's dtype before RoPE (and moves its int8 code by at most one, ~1% of its token's
        # largest); y ~ 1 keeps that ulp under atol where a rotation cancels.
        rtol=1e-2,
        atol=1e-2,
        doc="the q | k | v W4A16 linear (optionally after a folded RMSNorm) with RoPE and the KV cache write in its "
        "epilogue: returns q rotated, stores rotated k and v (none/int8/fp8/int4) at their positions of a static KV "
        "cache, in place (qkv_fold_ops)",
        observe=_linear_rope_kv_observe,
    ),
    "add_rms_norm": OpSpec(
        name="add_rms_norm",
        reference=add_rms_norm,
        # rms_norm's shapes: hidden 200 at 3 rows; a decode row of 576; leading dims with an fp32 weight; 17 x 1000.
        make_inputs=functools.partial(_add_rms_norm_inputs, shape=(3, 200), eps=1e-5),
        variants=(
            functools.partial(_add_rms_norm_inputs, shape=(1, 576), eps=1e-6),
            functools.partial(_add_rms_norm_inputs, shape=(2, 3, 576), eps=1e-5, weight_dtype=torch.float32),
            functools.partial(_add_rms_norm_inputs, shape=(17, 1000), eps=1e-6),
        ),
        # Judged on (normed, h) together: rms_norm's tolerance for the normalized h (a kernel sums the squares in
        # its own order); h itself is torch's sum rounded once, which a kernel computes bit for bit.
        rtol=4e-3,
        atol=1e-5,
        doc="residual add then RMSNorm: h = x + residual in x's dtype, then rms_norm(h); returns (normed, h)",
    ),
    "silu_and_mul": OpSpec(
        name="silu_and_mul",
        reference=silu_and_mul,
        # I = 200 at 3 rows; a decode row of SmolLM2's I = 1536; leading dims [2, 3, 2I]; I = 37 (odd: the up half
        # starts off every vector boundary); 17 rows of I = 1000.
        make_inputs=functools.partial(_silu_and_mul_inputs, shape=(3, 400)),
        variants=(
            functools.partial(_silu_and_mul_inputs, shape=(1, 3072)),
            functools.partial(_silu_and_mul_inputs, shape=(2, 3, 1152)),
            functools.partial(_silu_and_mul_inputs, shape=(5, 74)),
            functools.partial(_silu_and_mul_inputs, shape=(17, 2000)),
        ),
        # A kernel's exp is not torch's (~2^-22 + |g| 2^-24 relative in float32), so a rare silu value rounds to the
        # neighbouring bf16 / fp16 value, and its product with up lands one or two ulps away (2^-7 relative each).
        rtol=4e-3,
        atol=1e-5,
        doc="SwiGLU's activation: x [..., 2I] -> silu(x[..., :I]) * x[..., I:], silu in float32 rounded to x's "
        "dtype, then the product",
    ),
    # The fused activation quantizers (accel.runtime.fused_quant_ops) are judged in steps (_quantized_judged): codes
    # within one code of the reference's, row scales (and add_rms_norm_quant's h) within 2^-7 relative, one bf16 ulp.
    # A kernel computes the unfused op's y with its caveat (a rare element one ulp of y's dtype away, 2^-8 .. 2^-7
    # relative in bf16, ~1e-6 in float32), which moves that element's code by at most one and, where it is its row's
    # largest, the row's scale by as much (and so any code of the row by at most one); h is torch's sum exactly.
    "rms_norm_quant": OpSpec(
        name="rms_norm_quant",
        reference=rms_norm_quant,
        # rms_norm's shapes, int8 and e4m3 codes: hidden 200 at 3 rows; a decode row of 576; leading dims [2, 3, H]
        # with an fp32 weight (y in float32); 17 rows of 1000 whose first is all zeros (the scale's 1e-12 floor).
        make_inputs=functools.partial(_rms_norm_quant_inputs, shape=(3, 200), eps=1e-5, fp8=False),
        variants=(
            functools.partial(_rms_norm_quant_inputs, shape=(1, 576), eps=1e-6, fp8=True),
            *(
                functools.partial(
                    _rms_norm_quant_inputs, shape=(2, 3, 576), eps=1e-5, fp8=fp8, weight_dtype=torch.float32
                )
                for fp8 in (False, True)
            ),
            functools.partial(_rms_norm_quant_inputs, shape=(17, 1000), eps=1e-6, fp8=True, zero_row=True),
            functools.partial(_rms_norm_quant_inputs, shape=(17, 1000), eps=1e-6, fp8=False, zero_row=True),
        ),
        judge=functools.partial(_quantized_judged, rms_norm_quant),
        rtol=0.0,
        atol=1.0,
        doc="RMSNorm, then its output quantized per token (int8 or fp8 e4m3, activation_quant's dynamic symmetric "
        "convention): (codes [..., H], scale [..., 1] float32)",
    ),
    "add_rms_norm_quant": OpSpec(
        name="add_rms_norm_quant",
        reference=add_rms_norm_quant,
        # add_rms_norm's shapes, int8 and e4m3; the 17 x 1000 ones with a first row of h all zeros.
        make_inputs=functools.partial(_add_rms_norm_quant_inputs, shape=(3, 200), eps=1e-5, fp8=False),
        variants=(
            functools.partial(_add_rms_norm_quant_inputs, shape=(1, 576), eps=1e-6, fp8=True),
            functools.partial(
                _add_rms_norm_quant_inputs, shape=(2, 3, 576), eps=1e-5, fp8=False, weight_dtype=torch.float32
            ),
            functools.partial(_add_rms_norm_quant_inputs, shape=(17, 1000), eps=1e-6, fp8=True, zero_row=True),
            functools.partial(_add_rms_norm_quant_inputs, shape=(17, 1000), eps=1e-6, fp8=False, zero_row=True),
        ),
        judge=functools.partial(_quantized_judged, add_rms_norm_quant),
        rtol=0.0,
        atol=1.0,
        doc="residual add then RMSNorm, its output quantized per token: h = x + residual in x's dtype; returns "
        "(codes, scale, h), the codes and scales of rms_norm(h) as rms_norm_quant's",
    ),
    "silu_and_mul_quant": OpSpec(
        name="silu_and_mul_quant",
        reference=silu_and_mul_quant,
        # silu_and_mul's shapes (rows of different magnitudes), int8 and e4m3; 17 rows of I = 1000, the first zeros.
        make_inputs=functools.partial(_silu_and_mul_quant_inputs, shape=(3, 400), fp8=False),
        variants=(
            functools.partial(_silu_and_mul_quant_inputs, shape=(1, 3072), fp8=True),
            functools.partial(_silu_and_mul_quant_inputs, shape=(2, 3, 1152), fp8=False),
            functools.partial(_silu_and_mul_quant_inputs, shape=(5, 74), fp8=True),
            functools.partial(_silu_and_mul_quant_inputs, shape=(17, 2000), fp8=True, zero_row=True),
            functools.partial(_silu_and_mul_quant_inputs, shape=(17, 2000), fp8=False, zero_row=True),
        ),
        judge=functools.partial(_quantized_judged, silu_and_mul_quant),
        rtol=0.0,
        atol=1.0,
        doc="SwiGLU's activation silu(gate) * up, its output quantized per token (int8 or fp8 e4m3): "
        "(codes [..., I], scale [..., 1] float32)",
    ),
    "w8a8_scaled_mm": OpSpec(
        name="w8a8_scaled_mm",
        reference=w8a8_scaled_mm,
        # Codes of rows of very different sizes: int8 and e4m3 at 5 rows with a bias and x_scale [M, 1]; leading dims
        # [2, 3] with x_scale [2, 3], per-tensor weight scales and no bias; a decode row.
        make_inputs=functools.partial(_w8a8_scaled_mm_inputs, fp8=False, lead=(5,)),
        variants=(
            functools.partial(_w8a8_scaled_mm_inputs, fp8=True, lead=(5,)),
            functools.partial(
                _w8a8_scaled_mm_inputs, fp8=False, lead=(2, 3), bias=False, flat_scale=True, per_tensor_weight=True
            ),
            functools.partial(
                _w8a8_scaled_mm_inputs, fp8=True, lead=(2, 3), bias=False, flat_scale=True, per_tensor_weight=True
            ),
            functools.partial(_w8a8_scaled_mm_inputs, fp8=True, lead=(1,), k=256, n=96, flat_scale=True),
        ),
        # The linear ops' tolerance: the codes are given, so only the accumulation (fp8 on tensor cores in float32)
        # and the output's rounding differ.
        rtol=1e-2,
        atol=1e-2,
        doc="the GEMM of W8A8 on activations already quantized: (x_codes @ weight^T) * x_scale * weight_scale (+ bias) "
        "in out_dtype, int8 or e4m3 codes",
    ),
}
