"""Mixed precision: which scheme each layer gets (overrides, ignore list) and which layers are sensitive.

Targets match module names the way compressed-tensors matches them: `re:<regex>` is a regular expression
matched from the start of the name; anything else matches the name exactly or as a dotted suffix
(`lm_head` matches `lm_head`, `down_proj` matches `model.layers.3.mlp.down_proj`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from accel.quantization.weight_quant import WeightQuantArgs, fake_quantize
from accel.schema import QuantizationProfile


def matches(target: str, name: str) -> bool:
    """Does a target (exact name, dotted suffix, or `re:` regex) select module `name`?"""
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return name == target or name.endswith("." + target)


@dataclass(frozen=True)
class LayerScheme:
    """The quantization one layer gets: its weight args and the method that produces them."""

    args: WeightQuantArgs
    method: str

    def describe(self) -> dict[str, object]:
        a = self.args
        return {
            "method": self.method, "type": a.type, "num_bits": a.num_bits, "symmetric": a.symmetric,
            "strategy": a.strategy, "group_size": a.group_size if a.strategy == "group" else None,
        }


def resolve_scheme(name: str, profile: QuantizationProfile) -> LayerScheme | None:
    """The scheme for module `name`, or None if it stays in full precision.

    Ignored names and `skip` overrides stay full precision; otherwise the first override whose target matches
    replaces the profile's fields it sets.
    """
    if any(matches(target, name) for target in profile.ignore):
        return None
    fields = {
        "weight_bits": profile.weight_bits, "group_size": profile.group_size,
        "symmetric": profile.symmetric, "method": profile.method,
    }
    for target, override in profile.overrides.items():
        if matches(target, name):
            if override.skip:
                return None
            fields.update({k: v for k, v in override.model_dump(exclude={"skip"}).items() if v is not None})
            break
    if fields["weight_bits"] >= 16 or fields["method"] == "none":
        return None
    group_size = int(fields["group_size"])
    strategy = profile.weight_strategy if group_size != -1 else "channel"
    if strategy == "group" and group_size == -1:
        strategy = "channel"
    fp8 = profile.weight_type == "float"
    args = WeightQuantArgs(
        num_bits=int(fields["weight_bits"]),
        symmetric=bool(fields["symmetric"]) or fp8,
        strategy=strategy,
        group_size=group_size if strategy == "group" else 1,
        type=profile.weight_type,
    )
    return LayerScheme(args=args, method=str(fields["method"]))


@dataclass(frozen=True)
class Sensitivity:
    """Loss increase when one layer alone is quantized (RTN with the profile's scheme)."""

    layer: str
    delta_nll: float


def _nll(model: nn.Module, windows: torch.Tensor) -> float:
    with torch.inference_mode():
        logits = model(input_ids=windows, use_cache=False).logits[:, :-1].float()
        return float(nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)))


def sensitivity_scan(
    model: nn.Module, windows: torch.Tensor, profile: QuantizationProfile, layers: Iterable[str] | None = None
) -> list[Sensitivity]:
    """Rank decoder layers by the NLL increase on `windows` when only that layer is quantized (RTN).

    Each layer's linears are fake-quantized in place, the loss measured, and the weights restored.
    Returns the most sensitive first: the candidates for a higher-precision override.
    """
    decoder = model.model.layers  # Llama-family layout
    names = list(layers) if layers is not None else [f"model.layers.{i}" for i in range(len(decoder))]
    base = _nll(model, windows)
    results = []
    for layer_name in names:
        layer = model.get_submodule(layer_name)
        saved: list[tuple[nn.Linear, torch.Tensor]] = []
        for sub_name, module in layer.named_modules():
            scheme = resolve_scheme(f"{layer_name}.{sub_name}", profile) if isinstance(module, nn.Linear) else None
            if scheme is not None:
                saved.append((module, module.weight.data.clone()))
                module.weight.data = fake_quantize(module.weight.data, scheme.args)
        try:
            results.append(Sensitivity(layer_name, _nll(model, windows) - base))
        finally:
            for module, weight in saved:
                module.weight.data = weight
    return sorted(results, key=lambda s: -s.delta_nll)
