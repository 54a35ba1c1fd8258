"""accel's kernel ops on Hygon DCUs: the Triton kernels of accel-cuda, which Triton compiles for ROCm.

DCUs run PyTorch's ROCm build, where the device is "cuda" and Triton targets the AMD-lineage GPU (Hygon ships
Triton with its DTK; the DCU forks of LMDeploy and vLLM run Triton kernels on it). accel-cuda's W4A16 linear and
flash-decoding attention use only 16-bit dots, integer unpacking and Triton's portable language (no NVIDIA
inline assembly), so they are the DCU kernels here: `pip install accel-hygon[triton]` brings accel-cuda. Without
accel-cuda or Triton the table is empty and every op runs the portable reference. The int8 and fp8 W8A8 kernels
are not offered: their int8 / fp8 dots are not confirmed on DCUs.

None of this has run on a DCU. Importing this module imports neither Triton nor accel-cuda.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import torch


def triton_kernels_available() -> bool:
    """accel-cuda and Triton are both installed (found, not imported)."""
    return importlib.util.find_spec("accel_cuda") is not None and importlib.util.find_spec("triton") is not None


def w4a16_linear(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    **kwargs: Any,
) -> torch.Tensor:
    """accel-cuda's Triton W4A16 linear (accel_cuda.kernels.w4a16_linear), imported on first call."""
    from accel_cuda.kernels import w4a16_linear as triton_kernel

    return triton_kernel(x, weight_packed, weight_scale, weight_zero_point, group_size, **kwargs)


def w4a16_prepare(*weights: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """accel-cuda's load-time nibble permutation for its W4A16 kernel (accel_cuda.kernels.w4a16_prepare)."""
    from accel_cuda.kernels import w4a16_prepare as triton_prepare

    return triton_prepare(*weights)


def cached_attention(*args: Any) -> torch.Tensor:
    """accel-cuda's Triton flash-decoding attention over the static KV cache (accel_cuda.kernels.cached_attention)."""
    from accel_cuda.kernels import cached_attention as triton_kernel

    return triton_kernel(*args)


w4a16_linear.native_variants = frozenset({"w4a16", "w4a16-asym"})  # type: ignore[attr-defined]
cached_attention.native_variants = frozenset({"16-bit", "kv-int8", "kv-int4"})  # type: ignore[attr-defined]
TRITON_KERNELS: dict[str, Callable[..., torch.Tensor]] = {
    "w4a16_linear": w4a16_linear,
    "cached_attention": cached_attention,
}
PREPARE: dict[str, Callable[..., tuple[tuple[Any, ...], dict[str, Any]]]] = {"w4a16_linear": w4a16_prepare}


def kernels() -> dict[str, Callable[..., torch.Tensor]]:
    """The Triton kernels when accel-cuda and Triton are installed; empty otherwise (the reference runs)."""
    return dict(TRITON_KERNELS) if triton_kernels_available() else {}
