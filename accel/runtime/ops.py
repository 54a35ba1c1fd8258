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
from accel.runtime.kv_ops import KV_FORMATS, KVTensors, cached_attention, kv_cache_write, kv_dequantize, kv_quantize
from accel.runtime.norm_ops import rms_norm
from accel.runtime.packing import pack_int32, packed_columns, unpack_int32

InputMaker = Callable[[torch.Generator, str, torch.dtype], tuple[Any, ...]]


@dataclass(frozen=True)
class OpSpec:
    """One op: name, reference implementation, test inputs, and the tolerance a kernel must meet.

    Most ops return a tensor, and a kernel's output is compared with the reference's. An op that mutates its
    arguments instead (kv_cache_write stores into the cache) returns None and sets `observe`: what to compare,
    read from the arguments after the call (e.g. the dequantized stores). `result` hides the difference."""

    name: str
    reference: Callable[..., torch.Tensor | None]
    make_inputs: InputMaker
    rtol: float
    atol: float
    doc: str
    # More input sets a kernel must also match on (an op whose arguments select a path, e.g. a KV cache format).
    variants: tuple[InputMaker, ...] = ()
    # A mutating op: the tensor to compare, computed from its arguments after the call.
    observe: Callable[[tuple[Any, ...]], torch.Tensor] | None = None

    @property
    def input_makers(self) -> tuple[InputMaker, ...]:
        """make_inputs, then every variant: the conformance kit checks a kernel on each."""
        return (self.make_inputs, *self.variants)

    def result(self, impl: Callable[..., torch.Tensor | None], args: tuple[Any, ...]) -> torch.Tensor:
        """What a kernel is judged on: impl(*args); for a mutating op, `observe` of a clone of the arguments that
        impl ran on, so `args` stay as made and the reference and a kernel each start from the same inputs."""
        if self.observe is None:
            out = impl(*args)
            assert out is not None, f"{self.name}: returned None, but the op declares no `observe`"
            return out
        fresh = tuple(arg.clone() if isinstance(arg, torch.Tensor) else arg for arg in args)
        impl(*fresh)
        return self.observe(fresh)


def _dequant_linear_inputs(gen: torch.Generator, device: str, dtype: torch.dtype) -> tuple[Any, ...]:
    # Odd shapes on purpose: in_features 200 with group 64 leaves a partial last group.
    m, k, n, group = 3, 200, 72, 64
    weight = torch.randn(n, k, generator=gen, dtype=torch.float32)
    qw = quantize(weight, WeightQuantArgs(num_bits=4, symmetric=False, strategy="group", group_size=group))
    x = torch.randn(m, k, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)
    return (x, qw.q.to(device), qw.scale.to(device), qw.zero_point.to(device), group)  # type: ignore[union-attr]


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
    n, k = weight_packed.shape[0], x.shape[-1]
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
    weight = weight * weight_scale.to(torch.float32)[:, cols]
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
    n, k = weight_q.shape
    if x.shape[-1] != k or weight_q.dtype != torch.int8:
        raise ValueError(
            f"w8a8_int8_linear: x [..., {x.shape[-1]}] and int8 weight [N, K] = {tuple(weight_q.shape)} "
            f"({weight_q.dtype}) do not fit"
        )
    q_x, scale_x = quantize_activation(x, ActivationQuantArgs(type="int"))  # [..., K] int8, [..., 1] f32
    acc = torch.matmul(q_x.to(torch.float64), weight_q.to(torch.float64).T)  # [..., N], exact
    return _scaled_output(acc, scale_x, _per_channel(weight_scale, n, "w8a8_int8_linear"), bias, x.dtype)


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
    n, k = weight_fp8.shape
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
    acc = torch.matmul(q_x.to(torch.float64), weight_fp8.to(torch.float64).T)  # [..., N], exact
    return _scaled_output(acc, scale_x, _per_channel(weight_scale, n, "fp8_linear"), bias, x.dtype)


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
    k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt = args[3:]
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
        variants=tuple(
            functools.partial(_cached_attention_inputs, fmt=fmt, new_tokens=t)
            for fmt in KV_FORMATS
            for t in (1, 3)
            if (fmt, t) != ("none", 1)
        ),
        rtol=1e-2,
        atol=1e-2,
        doc="causal GQA attention of T new queries over a static KV cache (none/int8/fp8/int4), ragged lengths",
    ),
    "kv_cache_write": OpSpec(
        name="kv_cache_write",
        reference=kv_cache_write,
        make_inputs=functools.partial(_kv_cache_write_inputs, fmt="none"),
        variants=tuple(
            functools.partial(_kv_cache_write_inputs, fmt=fmt, new_tokens=t)
            for fmt in KV_FORMATS
            for t in (1, 5)
            if (fmt, t) != ("none", 1)
        ),
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
}
