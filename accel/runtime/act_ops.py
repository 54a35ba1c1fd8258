"""SwiGLU's activation as a kernel op: the portable reference of `silu_and_mul`.

    silu_and_mul(x) = silu(x[..., :I]) * x[..., I:]        x [..., 2I] -> [..., I],  silu(g) = g / (1 + exp(-g))

The decoder's MLP computes down(silu(gate) * up) with gate, up = gate_up_proj(x).split(I): in eager torch a silu
kernel and a mul kernel (each reading and writing the [..., I] halves), 32 times per Llama-3-8B forward, so a backend
fuses them into one launch (op "silu_and_mul", declared in ops.OPS; vLLM's silu_and_mul). The reference is that
expression verbatim: silu in float32 rounded to x's dtype, then the product of the two x-dtype values computed in
float32 and rounded once to x's dtype (torch's opmath for 16-bit dtypes).
"""

from __future__ import annotations

import torch

__all__ = ["check_silu_and_mul", "silu_and_mul"]


def check_silu_and_mul(x: torch.Tensor) -> None:
    """A ValueError naming x when it does not fit silu_and_mul's contract: floating point, [..., 2I] with I >= 1."""
    if x.ndim < 1 or not x.is_floating_point() or x.shape[-1] % 2 or x.shape[-1] == 0:
        raise ValueError(
            f"silu_and_mul: x must be a floating-point tensor [..., 2 * intermediate] (gate then up, an even, "
            f"non-zero last dimension), got {x.dtype} {tuple(x.shape)}"
        )


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate, up = x.split(I, -1) (module docstring): x [..., 2I] in any float dtype -> [..., I]
    in x's dtype; the model's former MLP expression, so on the CPU the op computes the same bits."""
    check_silu_and_mul(x)
    gate, up = x.split(x.shape[-1] // 2, -1)
    return torch.nn.functional.silu(gate) * up
