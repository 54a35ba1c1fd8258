"""What a serving engine needs to know about an accel artifact, read once from its config.json and manifest.

An engine decides from config.json's `quantization_config` how to load the weights (compressed-tensors'
config_groups and kv_cache_scheme, or AutoAWQ's bits/group_size/version), so the adapters read exactly that,
plus the AccelConfig the manifest recorded (the KV cache and speculative choices the artifact was made for).
The group size here is the one *stored* in the file: accel stores g128 as g64 on a model whose input sizes 128
does not divide (accel.runtime.artifact), and an engine sees the stored one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.errors import AccelError
from accel.schema import AccelConfig

__all__ = ["ArtifactSummary", "EngineConfigError", "WeightScheme", "kv_choice", "read_artifact", "resolve_config"]


class EngineConfigError(AccelError, ValueError):
    """An AccelConfig or artifact asks for something the target engine cannot take; the message says what to do."""


@dataclass(frozen=True)
class WeightScheme:
    """One compressed-tensors config group (or the AWQ config): how its Linears are stored."""

    format: str  # pack-quantized, int-quantized, float-quantized, naive-quantized, autoawq-gemm
    num_bits: int
    type: str  # int or float
    strategy: str  # tensor, channel, group
    group_size: int | None
    symmetric: bool
    activations: dict[str, Any] | None  # input_activations, None for weight-only
    targets: tuple[str, ...]


@dataclass(frozen=True)
class ArtifactSummary:
    """An artifact as an engine sees it: `format` is "compressed-tensors", "autoawq-gemm" or "dense"."""

    path: Path
    format: str
    quant_method: str | None
    schemes: tuple[WeightScheme, ...]
    kv_cache_scheme: dict[str, Any] | None
    dtype: str
    max_position_embeddings: int | None
    accel_config: AccelConfig
    sparsity: dict[str, Any] | None = None
    raw_quantization_config: dict[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> WeightScheme | None:
        """The one weight scheme of the model (None when dense or mixed precision)."""
        return self.schemes[0] if len(self.schemes) == 1 else None


def _compressed_tensors_schemes(path: Path, quant: dict[str, Any]) -> tuple[WeightScheme, ...]:
    schemes = []
    for name, group in (quant.get("config_groups") or {}).items():
        weights = group.get("weights") or {}
        try:
            schemes.append(WeightScheme(
                format=group.get("format") or quant.get("format"), num_bits=int(weights["num_bits"]),
                type=str(weights.get("type", "int")), strategy=str(weights.get("strategy", "group")),
                group_size=weights.get("group_size"), symmetric=bool(weights.get("symmetric", True)),
                activations=group.get("input_activations"), targets=tuple(group.get("targets") or ()),
            ))
        except (KeyError, TypeError, ValueError) as exc:
            raise EngineConfigError(
                f"{path}/config.json: quantization_config.config_groups.{name}.weights is malformed ({exc}); "
                "re-export the artifact with `sage infer quantize`"
            ) from None
    return tuple(schemes)


def read_artifact(path: str | Path, *, verify: bool = True) -> ArtifactSummary:
    """Read an artifact directory for an engine adapter. `verify` checks every file against the manifest's sha256
    first (accel.runtime.artifact.verify_artifact), as loading does; pass False to skip hashing large weights."""
    from accel.runtime.artifact import MANIFEST_NAME, verify_artifact

    root = Path(path).expanduser().absolute()
    if verify:
        manifest = verify_artifact(root)
    else:
        try:
            manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise EngineConfigError(
                f"{root}: cannot read {MANIFEST_NAME} ({exc}); is this an accel artifact (`sage infer quantize`)?"
            ) from None
    try:
        config = json.loads((root / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise EngineConfigError(f"{root}: cannot read config.json ({exc}); re-export the artifact") from None
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method")
    if method == "compressed-tensors":
        fmt, schemes = "compressed-tensors", _compressed_tensors_schemes(root, quant)
    elif method == "awq":
        fmt = "autoawq-gemm"
        schemes = (WeightScheme("autoawq-gemm", int(quant.get("bits", 4)), "int", "group", quant.get("group_size"),
                                not quant.get("zero_point", True), None, ("Linear",)),)
    elif method is None:
        fmt, schemes = "dense", ()
    else:
        raise EngineConfigError(
            f"{root}: quantization_config.quant_method {method!r} is not one accel writes (compressed-tensors, awq)"
        )
    return ArtifactSummary(
        path=root, format=fmt, quant_method=method, schemes=schemes, kv_cache_scheme=quant.get("kv_cache_scheme"),
        dtype=str(manifest.get("dtype") or config.get("torch_dtype") or config.get("dtype") or "float16"),
        max_position_embeddings=config.get("max_position_embeddings"),
        accel_config=AccelConfig.model_validate(manifest.get("accel_config") or {}),
        sparsity=manifest.get("sparsity"), raw_quantization_config=quant,
    )


def resolve_config(artifact: ArtifactSummary, config: AccelConfig | None) -> AccelConfig:
    """The config to serve with: the one given, else the one the artifact was made with. A given config whose
    weight precision contradicts the stored weights is refused (the weights cannot change at serving time)."""
    if config is None:
        return artifact.accel_config
    stored = {scheme.num_bits for scheme in artifact.schemes} or {16}
    wanted = config.quantization.weight_bits
    if wanted not in stored and not config.quantization.overrides:
        raise EngineConfigError(
            f"the AccelConfig asks for quantization.weight_bits {wanted}, but {artifact.path} stores "
            f"{'/'.join(map(str, sorted(stored)))}-bit weights; pass the config the artifact was made with (its "
            "manifest holds it: omit the config) or re-quantize with this one"
        )
    return config


def kv_choice(config: AccelConfig) -> tuple[int, str, list[str]]:
    """(bits, number type, notes) of the KV cache an engine should store: engines keep one format for the whole
    cache, so a profile with different prefill and decode precisions is served at its decode precision."""
    quant = config.quantization
    notes = []
    if quant.kv_bits_prefill != quant.kv_bits_decode:
        notes.append(
            f"kv_bits_prefill {quant.kv_bits_prefill} != kv_bits_decode {quant.kv_bits_decode}: engines keep one KV "
            f"format, so the cache is stored at the decode precision ({quant.kv_bits_decode} bits)"
        )
    return quant.kv_bits_decode, quant.kv_type, notes
