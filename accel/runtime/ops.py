"""The kernel ops accel knows, each with its portable reference and a generator of test inputs.

A backend's kernel for an op must match the reference on the op's inputs within its tolerance; the
conformance kit (accel.testing) checks exactly that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from accel.quantization.kernels.reference import dequant_linear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.packing import pack_int32, packed_columns, unpack_int32


@dataclass(frozen=True)
class OpSpec:
    """One op: name, reference implementation, test inputs, and the tolerance a kernel must meet."""

    name: str
    reference: Callable[..., torch.Tensor]
    make_inputs: Callable[[torch.Generator, str, torch.dtype], tuple[Any, ...]]
    rtol: float
    atol: float
    doc: str


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
}
