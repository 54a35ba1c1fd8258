"""RMSNorm and SwiGLU folded into the W4A16 decode GEMVs around them (ops w4a16_linear_residual, w4a16_linear_rms,
w4a16_linear_silu_mul; the contract and the math are accel.runtime.norm_fold_ops').

Where w4a16_linear would run the TMA decode GEMV (w4a16_gemv_tma.py: Hopper, permuted words, symmetric, group 128,
an M the table tuned, not one the tensor-core kernel is planned for), the fold is that GEMV's epilogue: the residual
op adds the residual to its rows and stores h and h * w (its plan must be split 1, so one program owns each row
tile) and each program's sum of h^2 over its rows; the rms op loads those N / block_n partial sums of its row
before the K loop (so the load hides behind the pipeline) and scales its dot products by 1 / sqrt(sum / K + eps).
The SwiGLU op's programs each take block_n / 2 gate rows and the up rows I below them (split 1) and store
silu(gate) * up (act.py's expression). Anywhere else the ops run w4a16_linear and finish in torch (or the
silu_and_mul kernel): the same results, the launches not saved.
"""

from __future__ import annotations

import torch

from accel.runtime.norm_fold_ops import check_linear_residual, check_linear_rms, rms_scale, sum_of_squares
from accel_cuda.kernels import silu_and_mul
from accel_cuda.kernels import w4a16_gemv as gemv
from accel_cuda.kernels import w4a16_gemv_tma as gemv_tma
from accel_cuda.kernels import wxa16_tma_dot as tma_dot
from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.w4a16 import _device_info, w4a16_linear

__all__ = ["accepts", "fold_launch", "fold_plan", "w4a16_linear_residual", "w4a16_linear_rms", "w4a16_linear_silu_mul"]


def fold_launch(
    m: int,
    dtype: torch.dtype,
    device: torch.device,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    permuted: bool,
) -> gemv_tma.TmaGemvConfig | None:
    """The TMA GEMV launch w4a16_linear runs for m rows of `dtype` on `device` with these weights (permute_nibbles'
    words [N, K/8]), or None where it runs another kernel."""
    n, k = weight_packed.shape[0], weight_packed.shape[1] * 8
    if device.type != "cuda" or not permuted or weight_zero_point is not None or m < 1:
        return None
    if dtype not in (torch.float16, torch.bfloat16) or not gemv.supports(k, weight_scale.shape[1], group_size):
        return None
    if weight_packed.data_ptr() % 16 or weight_scale.data_ptr() % 16:
        return None
    sms, name = _device_info(device)
    capability = device_info(device).capability
    if tma_dot.tma_dot_plan(m, n, k, 4, name, capability, sms) is not None:
        return None
    return gemv_tma.tma_plan(m, n, k, name, capability)


def fold_plan(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    permuted: bool,
) -> gemv_tma.TmaGemvConfig | None:
    """fold_launch for this x (contiguous, 16-byte aligned, K = the words' 8 per word), else None."""
    k = x.shape[-1]
    if k != weight_packed.shape[1] * 8 or not x.is_contiguous() or x.data_ptr() % 16 or x.numel() == 0:
        return None
    return fold_launch(x.numel() // k, x.dtype, x.device, weight_packed, weight_scale, weight_zero_point,
                       group_size, permuted)


def accepts(
    op: str,
    rows: int,
    dtype: torch.dtype,
    device: torch.device,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    *,
    permuted: bool = False,
) -> bool:
    """KernelChoice.accepts for the three ops: the GEMV runs the fold (the residual and SwiGLU epilogues need a
    split-1 launch; SwiGLU's, gate and up tiles of block_n / 2 rows each)."""
    config = fold_launch(rows, dtype, device, weight_packed, weight_scale, weight_zero_point, group_size, permuted)
    if config is None or op == "w4a16_linear_rms":
        return config is not None
    return config.split == 1 and (op != "w4a16_linear_silu_mul" or _silu_tiles(weight_packed.shape[0], config))


def _silu_tiles(n: int, config: gemv_tma.TmaGemvConfig) -> bool:
    """The SwiGLU epilogue's tiling: split 1, gate and up halves of block_n / 2 rows each."""
    return config.split == 1 and config.block_n % 2 == 0 and n % 2 == 0 and (n // 2) % (config.block_n // 2) == 0


def w4a16_linear_residual(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    residual: torch.Tensor,
    norm_weight: torch.Tensor,
    *,
    permuted: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(h, h * norm_weight, ss) with h = x @ W^T + residual and ss partial sums of h^2 (one per program: [..., N /
    block_n]), in the GEMV's epilogue where fold_plan has a split-1 launch (module docstring); `permuted` as
    w4a16_linear's."""
    shape = (*x.shape[:-1], weight_packed.shape[0])
    check_linear_residual(torch.Size(shape), x.dtype, residual, norm_weight)
    config = fold_plan(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted)
    if config is None or config.split != 1 or not residual.is_contiguous() or not norm_weight.is_contiguous():
        h = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted=permuted) + residual
        return h, (h.to(torch.float32) * norm_weight.to(torch.float32)).to(x.dtype), sum_of_squares(h)
    hw = torch.empty(shape, dtype=x.dtype, device=x.device)
    ss = torch.empty((*shape[:-1], shape[-1] // config.block_n), dtype=torch.float32, device=x.device)
    h = gemv_tma.w4a16_tma_gemv(x, weight_packed, weight_scale, None, config=config,
                                residual=(residual, norm_weight, hw, ss))
    return h, hw, ss


def w4a16_linear_rms(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor,
    eps: float,
    *,
    permuted: bool = False,
) -> torch.Tensor:
    """1 / sqrt(sum(ss) / K + eps) * (x @ W^T) per row, ss partial sums of h^2 [..., P], in the GEMV where fold_plan
    has a launch (module docstring)."""
    check_linear_rms(x, ss, eps)
    config = fold_plan(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted)
    if config is None or not ss.is_contiguous():
        y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted=permuted)
        return (y.to(torch.float32) * rms_scale(ss, x.shape[-1], eps)).to(x.dtype)
    return gemv_tma.w4a16_tma_gemv(x, weight_packed, weight_scale, None, config=config, rms=(ss, eps))


def w4a16_linear_silu_mul(
    x: torch.Tensor,
    weight_packed: torch.Tensor,
    weight_scale: torch.Tensor,
    weight_zero_point: torch.Tensor | None,
    group_size: int,
    ss: torch.Tensor | None,
    eps: float,
    *,
    permuted: bool = False,
) -> torch.Tensor:
    """silu(gate) * up of the stacked gate | up linear's output (scaled by the norm's r where ss is given), in the
    GEMV's epilogue where fold_plan has a split-1 launch whose tiles halve (module docstring)."""
    if ss is not None:
        check_linear_rms(x, ss, eps)
    config = fold_plan(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted)
    if config is None or not _silu_tiles(weight_packed.shape[0], config) or (ss is not None and not ss.is_contiguous()):
        if ss is None:
            y = w4a16_linear(x, weight_packed, weight_scale, weight_zero_point, group_size, permuted=permuted)
        else:
            y = w4a16_linear_rms(x, weight_packed, weight_scale, weight_zero_point, group_size, ss, eps,
                                 permuted=permuted)
        return silu_and_mul(y)
    rms = None if ss is None else (ss, eps)
    return gemv_tma.w4a16_tma_gemv(x, weight_packed, weight_scale, None, config=config, rms=rms, silu=True)
