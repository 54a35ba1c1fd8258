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


OPS: dict[str, OpSpec] = {
    "dequant_linear": OpSpec(
        name="dequant_linear",
        reference=dequant_linear,
        make_inputs=_dequant_linear_inputs,
        rtol=1e-2,
        atol=1e-2,
        doc="x @ ((q - zp) * s)^T with unpacked integer codes, per-channel or per-group scales",
    ),
}
