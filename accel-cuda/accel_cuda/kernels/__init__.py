"""accel-cuda's Triton kernels. Importing this package does not import Triton: each entry point loads its
module (and Triton) on first call, so discovery and selection stay cheap on machines without a GPU."""

from __future__ import annotations

import importlib.util
from typing import Any

import torch

__all__ = ["triton_available", "w4a16_linear"]


def triton_available() -> bool:
    """True when Triton is installed (found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    **kwargs: Any,
) -> torch.Tensor:
    """The Triton W4A16 linear (accel_cuda.kernels.w4a16.w4a16_linear), imported on first call."""
    from accel_cuda.kernels.w4a16 import w4a16_linear as impl

    return impl(x, weight_packed, weight_scale, weight_zero_point, group_size, **kwargs)
