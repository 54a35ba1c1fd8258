"""AutoAWQ GEMM export: the 4-bit layout LMDeploy TurboMind and transformers' AWQ loader read.

Per quantized Linear <m> with in_features I, out_features O, group size g (unsigned 4-bit values: our signed
codes and zero points + 8, so w^ = (q_u - z_u) * s = (q - zp) * s):
    <m>.qweight  int32 [I, O/8]    q_u transposed to [I, O], 8 output columns per int32
    <m>.qzeros   int32 [I/g, O/8]  z_u transposed to [I/g, O], packed the same way
    <m>.scales   fp16  [I/g, O]
Within each int32, nibble i (bits 4i..4i+3) holds output column 8c + AWQ_ORDER[i], AWQ_ORDER = [0,2,4,6,1,3,5,7]
(AutoAWQ's WQLinear_GEMM.from_linear). AWQ kernels need whole groups (I % g == 0), asymmetric weights, no
act-order, and O % 8 == 0; anything else is refused with the layer named.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import ArtifactError
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import WeightQuantArgs
from accel.runtime.artifact import ArtifactInfo, dense_tensors, write_artifact
from accel.runtime.mixed_precision import resolve_scheme
from accel.runtime.packing import to_int32
from accel.schema import AccelConfig, QuantizationProfile

__all__ = ["AWQ_ORDER", "FORMAT", "export_autoawq", "pack_awq"]

FORMAT = "autoawq-gemm"
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
BITS = 4


def pack_awq(values: torch.Tensor) -> torch.Tensor:
    """Unsigned 4-bit values [rows, cols] -> int32 [rows, cols/8] in AutoAWQ's GEMM nibble order."""
    rows, cols = values.shape
    nibbles = values.to(torch.int64).reshape(rows, cols // 8, 8)[..., list(AWQ_ORDER)]
    shifts = torch.arange(8, device=values.device) * BITS
    return to_int32((nibbles << shifts).sum(dim=-1))


def _check_args(
    name: str, args: WeightQuantArgs, quantizes_activations: bool, in_features: int, out_features: int,
    fitting: list[int],
) -> None:
    """Refuse what AutoAWQ GEMM cannot hold, naming the layer and what to re-quantize with."""
    if args.type != "int" or args.num_bits != BITS:
        raise ArtifactError(f"{name}: AutoAWQ holds 4-bit integer weights, this layer is {args.type}{args.num_bits}")
    if args.symmetric:
        raise ArtifactError(f"{name}: AutoAWQ GEMM stores zero points; re-quantize with symmetric=False")
    if quantizes_activations:
        raise ArtifactError(f"{name}: AutoAWQ is weight-only; this layer also quantizes its activations")
    if args.strategy != "group":
        raise ArtifactError(f"{name}: AutoAWQ needs group-wise scales, this layer is per-{args.strategy}")
    if in_features % args.group_size:
        hint = " or ".join(str(size) for size in fitting) or f"a divisor of {in_features}"
        raise ArtifactError(
            f"{name}: group_size {args.group_size} does not divide in_features {in_features}, and AWQ kernels "
            f"need whole groups; re-quantize with group_size {hint} (they divide every quantized layer of this model)"
        )
    if out_features % 8:
        raise ArtifactError(f"{name}: out_features {out_features} is not a multiple of 8 (AutoAWQ packing)")


def _fitting_group_sizes(in_sizes: set[int]) -> list[int]:
    return [size for size in (128, 64, 32) if all(features % size == 0 for features in in_sizes)]


def _check_layer(name: str, module: QuantLinear, fitting: list[int]) -> None:
    args = module.weight_args
    _check_args(name, args, module.act_args is not None, module.in_features, module.out_features, fitting)
    g_idx = module.weight_g_idx
    if g_idx is not None and not torch.equal(g_idx.cpu().long(), torch.arange(module.in_features) // args.group_size):
        raise ArtifactError(f"{name}: AutoAWQ has no act-order (g_idx); re-quantize without act-order")


def check_exportable(model: nn.Module, profile: QuantizationProfile) -> None:
    """Before quantizing: refuse a profile whose layers export_autoawq would refuse afterwards."""
    linears = {
        name: (module, scheme)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and (scheme := resolve_scheme(name, profile)) is not None
    }
    fitting = _fitting_group_sizes({module.in_features for module, _ in linears.values()})
    for name, (module, scheme) in linears.items():
        _check_args(name, scheme.args, profile.quantizes_activations, module.in_features, module.out_features, fitting)
    if profile.method_config.get("act_order") and not profile.method_config.get("static_groups"):
        raise ArtifactError("AutoAWQ has no act-order (g_idx); use static_groups or no act_order")


def _awq_tensors(name: str, module: QuantLinear, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    offset = 1 << (BITS - 1)
    q = module.weight_q.to(torch.int16) + offset
    zeros = module.weight_zero_point.to(torch.int16) + offset
    tensors = {
        f"{name}.qweight": pack_awq(q.T),
        f"{name}.qzeros": pack_awq(zeros.T),
        f"{name}.scales": module.weight_scale.T.to(torch.float16).contiguous(),
    }
    if module.bias is not None:
        tensors[f"{name}.bias"] = module.bias.to(dtype)
    return tensors


def export_autoawq(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | os.PathLike[str],
    config: AccelConfig,
    *,
    source: str,
    layer_choices: dict[str, dict] | None = None,
    kernel_meta: dict | None = None,
    dtype: torch.dtype = torch.float16,
    overwrite: bool = False,
) -> ArtifactInfo:
    """Write a W4 asymmetric group-wise model as an AutoAWQ GEMM checkpoint with accel's manifest (atomically).

    Unquantized tensors are written in `dtype`; scales are always fp16 (what the AWQ GEMM kernels take).
    """
    quantized = {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}
    if not quantized:
        raise ArtifactError("the model has no quantized layers; AutoAWQ export needs W4 asymmetric group-wise layers")
    fitting = _fitting_group_sizes({module.in_features for module in quantized.values()})
    for name, module in quantized.items():
        _check_layer(name, module, fitting)
    group_sizes = {module.weight_args.group_size for module in quantized.values()}
    if len(group_sizes) != 1:
        raise ArtifactError(f"AutoAWQ has one group size per model; this model mixes {sorted(group_sizes)}")
    group_size = group_sizes.pop()
    tensors = dense_tensors(model, set(quantized), dtype)
    for name, module in quantized.items():
        tensors.update(_awq_tensors(name, module, dtype))
    unconverted = [
        name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear) and name not in quantized
    ]
    quantization_config: dict[str, Any] = {
        "quant_method": "awq", "bits": BITS, "group_size": group_size, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": unconverted or None,
    }
    manifest = {
        "format": FORMAT,
        "source": source,
        "accel_config": config.model_dump(mode="json"),
        "layers": {
            name: {"format": FORMAT, "shape": [module.out_features, module.in_features],
                   "weights": dataclasses.asdict(module.weight_args)}
            for name, module in quantized.items()
        },
        "kv_cache": None,
        "layer_choices": layer_choices or {},
        "kernel_meta": kernel_meta or {},
    }
    return write_artifact(
        model, tokenizer, out_dir, tensors=tensors, quantization_config=quantization_config, manifest=manifest,
        dtype=dtype, overwrite=overwrite, untie_embeddings=isinstance(model.get_output_embeddings(), QuantLinear),
    )
