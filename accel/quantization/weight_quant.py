"""Integer weight quantizers: symmetric and asymmetric, per-tensor, per-channel and per-group.

Conventions are compressed-tensors' (the format vLLM loads), so our codes and scales are its codes and
scales:
    q  = clamp(round(w / s) + zp, qmin, qmax)        qmin = -2^(b-1), qmax = 2^(b-1) - 1
    w^ = (q - zp) * s
    symmetric:  s = max(|min w|, |max w|) / ((qmax - qmin) / 2),  zp = 0
    asymmetric: s = (max(w, 0) - min(w, 0)) / (qmax - qmin),       zp = qmin - round(min(w, 0) / s)
A group size that does not divide the input dimension gives ceil(in / g) groups, the last one partial.

fp8 (type "float", 8 bits) is e4m3 with a scale per tensor or channel: s = max |w| / 448,
q = fp8(clamp(w / s, -448, 448)), w^ = q * s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch

from accel.schema import QuantizationProfile

Strategy = Literal["tensor", "channel", "group"]
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448


@dataclass(frozen=True)
class WeightQuantArgs:
    """How one weight is quantized: bit width, symmetry and granularity."""

    num_bits: int = 4
    symmetric: bool = True
    strategy: Strategy = "group"
    group_size: int = 128
    type: Literal["int", "float"] = "int"

    def __post_init__(self) -> None:
        if self.type == "float" and (self.num_bits != 8 or not self.symmetric):
            raise ValueError("float weights are fp8 e4m3: num_bits 8, symmetric")
        if not 2 <= self.num_bits <= 8:
            raise ValueError(f"num_bits must be 2..8 for integer weights, got {self.num_bits}")
        if self.strategy == "group" and self.group_size <= 0:
            raise ValueError(f"strategy 'group' needs group_size > 0, got {self.group_size}")

    @property
    def is_fp8(self) -> bool:
        return self.type == "float"

    @property
    def qmin(self) -> float:
        return -FP8_MAX if self.is_fp8 else -(2 ** (self.num_bits - 1))

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.is_fp8 else 2 ** (self.num_bits - 1) - 1

    @classmethod
    def from_profile(cls, profile: QuantizationProfile) -> WeightQuantArgs:
        return cls(
            num_bits=profile.weight_bits,
            symmetric=profile.symmetric or profile.weight_type == "float",
            strategy=profile.weight_strategy,
            group_size=profile.group_size if profile.weight_strategy == "group" else -1,
            type=profile.weight_type,
        )

    def num_groups(self, in_features: int) -> int:
        """Scale columns: 1 for tensor and channel, ceil(in / group_size) for group."""
        return math.ceil(in_features / self.group_size) if self.strategy == "group" else 1


@dataclass
class QuantizedWeight:
    """Integer codes `q` [out, in] (int8 storage) with `scale` and `zero_point` of shape
    [1, 1] (tensor), [out, 1] (channel) or [out, ceil(in / g)] (group).

    `g_idx` [in] (GPTQ act-order) maps each input column to its group; without it column i is in group
    i // group_size."""

    q: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    args: WeightQuantArgs
    g_idx: torch.Tensor | None = None

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        return dequantize(self.q, self.scale, self.zero_point, self.args, dtype or self.scale.dtype, self.g_idx)


def _grouped(weight: torch.Tensor, args: WeightQuantArgs) -> torch.Tensor:
    """View the weight as [rows, groups, group_len] for min/max; the last group is padded with a copy
    of the row's last column, which leaves that group's min and max unchanged."""
    out_features, in_features = weight.shape
    if args.strategy == "tensor":
        return weight.reshape(1, 1, -1)
    if args.strategy == "channel":
        return weight.reshape(out_features, 1, in_features)
    groups = args.num_groups(in_features)
    pad = groups * args.group_size - in_features
    if pad:
        weight = torch.cat([weight, weight[:, -1:].expand(out_features, pad)], dim=1)
    return weight.reshape(out_features, groups, args.group_size)


def compute_qparams(
    w_min: torch.Tensor, w_max: torch.Tensor, args: WeightQuantArgs
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scale and zero point from the observed range (the module docstring has the formulas)."""
    w_min = torch.clamp(w_min, max=0)
    w_max = torch.clamp(w_max, min=0)
    bit_range = args.qmax - args.qmin
    eps = torch.finfo(w_min.dtype).eps
    if args.is_fp8:
        scale = torch.maximum(w_min.abs(), w_max) / FP8_MAX
        return torch.where(scale == 0, torch.full_like(scale, eps), scale), None
    if args.symmetric:
        scale = torch.maximum(w_min.abs(), w_max) / (bit_range / 2)
        scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
        return scale, None
    scale = (w_max - w_min) / bit_range
    scale = torch.where(scale == 0, torch.full_like(scale, eps), scale)
    zero_point = torch.clamp(args.qmin - torch.round(w_min / scale), args.qmin, args.qmax)
    return scale, zero_point.to(torch.int8)


def expand_to_columns(
    params: torch.Tensor, args: WeightQuantArgs, in_features: int, g_idx: torch.Tensor | None = None
) -> torch.Tensor:
    """Broadcast [*, groups] scales or zero points to one value per weight column (by g_idx if given)."""
    if args.strategy != "group":
        return params
    if g_idx is not None:
        return params[:, g_idx.long()]
    return params.repeat_interleave(args.group_size, dim=1)[:, :in_features]


def quantize_with_qparams(
    weight: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    args: WeightQuantArgs,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """q = clamp(round(w / s) + zp, qmin, qmax), as int8 (fp8: fp8(clamp(w / s)), rounding by the cast)."""
    in_features = weight.shape[1]
    s = expand_to_columns(scale, args, in_features, g_idx).to(weight.dtype)
    if args.is_fp8:
        return torch.clamp(weight / s, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    q = torch.round(weight / s)
    if zero_point is not None:
        q = q + expand_to_columns(zero_point, args, in_features, g_idx).to(weight.dtype)
    return torch.clamp(q, args.qmin, args.qmax).to(torch.int8)


def quantize(weight: torch.Tensor, args: WeightQuantArgs) -> QuantizedWeight:
    """Round-to-nearest quantization of a 2-D weight [out, in] with min/max ranges (fp8: absmax)."""
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight [out, in], got shape {tuple(weight.shape)}")
    work = weight if weight.dtype == torch.float64 else weight.float()
    grouped = _grouped(work, args)
    scale, zero_point = compute_qparams(grouped.amin(dim=-1), grouped.amax(dim=-1), args)
    q = quantize_with_qparams(work, scale, zero_point, args)
    return QuantizedWeight(q=q, scale=scale.to(weight.dtype), zero_point=zero_point, args=args)


def dequantize(
    q: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    args: WeightQuantArgs,
    dtype: torch.dtype = torch.float32,
    g_idx: torch.Tensor | None = None,
) -> torch.Tensor:
    """w^ = (q - zp) * s, in `dtype`."""
    in_features = q.shape[1]
    values = q.to(dtype)
    if zero_point is not None:
        values = values - expand_to_columns(zero_point, args, in_features, g_idx).to(dtype)
    return values * expand_to_columns(scale, args, in_features, g_idx).to(dtype)


def fake_quantize(weight: torch.Tensor, args: WeightQuantArgs) -> torch.Tensor:
    """Quantize then dequantize, in the weight's dtype (what the model computes with after RTN)."""
    return quantize(weight, args).dequantize(weight.dtype)


def zero_dropped(qweight: QuantizedWeight, keep: torch.Tensor) -> tuple[QuantizedWeight, int]:
    """Give every dropped weight (keep False) the zero code, so it dequantizes to exactly 0: (q - zp) * s with
    q = zp (asymmetric), q = 0 (symmetric, fp8). Returns the weight and how many codes had to change (0 when the
    method honoured LinearStats.keep)."""
    q, drop = qweight.q, ~keep.to(torch.bool)
    if qweight.args.is_fp8:
        raw = q.view(torch.uint8)  # fp8 e4m3 +0.0 is the all-zero byte
        changed = int((q.float()[drop] != 0).sum())  # -0.0 already dequantizes to 0
        return replace(qweight, q=raw.masked_fill(drop, 0).view(FP8_DTYPE)), changed
    zero = torch.zeros_like(q)
    if qweight.zero_point is not None:
        zero = expand_to_columns(qweight.zero_point, qweight.args, q.shape[1], qweight.g_idx).to(q.dtype)
        zero = zero.expand_as(q)
    changed = int((q[drop] != zero[drop]).sum())
    return replace(qweight, q=torch.where(drop, zero, q)), changed
