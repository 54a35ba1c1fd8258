"""SparsityConfig: the pruning recipe (pattern, ratio, criterion, per-layer ratios, layers to skip)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from accel.schema.base import AccelModel
from accel.schema.quantization import check_sparsity_pattern, parse_nm


class SparsityConfig(AccelModel):
    """How to prune: N:M patterns are along the input dimension, as sparse tensor cores read them.

    `method` is a registered pruning method (magnitude; wanda and sparsegpt from accel-sparsegpt) and
    `method_config` its own settings, e.g. {"dampening_frac": 0.01, "block_size": 128} for SparseGPT.
    `layer_ratios` maps a target (an exact module name, a dotted suffix such as 'down_proj', or 're:<regex>', as
    the quantization overrides match) to its own ratio, for unstructured and block patterns (0 leaves it dense);
    `ignore` lists targets left dense. The linears of the decoder layers are pruned, of the kinds `targets` says.
    """

    pattern: str = "2:4"
    ratio: float = Field(default=0.5, ge=0.0, lt=1.0)
    method: str = "magnitude"
    method_config: dict[str, Any] = Field(default_factory=dict)
    block_shape: tuple[int, int] = (16, 16)
    layer_ratios: dict[str, float] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])
    targets: Literal["linear", "attention", "mlp"] = "linear"

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_\-]+", value):
            raise ValueError(f"method must be a pruning method name such as 'magnitude' or 'sparsegpt', got {value!r}")
        return value

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_sparsity_pattern(value)

    @field_validator("block_shape")
    @classmethod
    def _block(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) <= 0:
            raise ValueError(f"block_shape must be two positive integers, got {value}")
        return value

    @field_validator("layer_ratios")
    @classmethod
    def _ratios(cls, value: dict[str, float]) -> dict[str, float]:
        for target, ratio in value.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"layer_ratios[{target!r}] must be in [0, 1), got {ratio}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _nm_implies_ratio(cls, data: object) -> object:
        # An N:M pattern fixes the ratio: N of every M weights are kept.
        if isinstance(data, dict) and "ratio" not in data:
            nm = parse_nm(str(data.get("pattern", "2:4")))
            if nm is not None:
                return {**data, "ratio": 1.0 - nm[0] / nm[1]}
        return data

    @model_validator(mode="after")
    def _nm_ratio(self) -> SparsityConfig:
        nm = self.nm
        if nm is not None and abs(self.ratio - (1.0 - nm[0] / nm[1])) > 1e-9:
            implied = 1.0 - nm[0] / nm[1]
            raise ValueError(f"pattern {self.pattern} implies ratio {implied:g}, got ratio {self.ratio:g}")
        if nm is not None and self.layer_ratios:
            raise ValueError(
                f"layer_ratios {sorted(self.layer_ratios)}: pattern {self.pattern} fixes every layer's ratio; "
                "list layers to leave dense in ignore instead"
            )
        return self

    @property
    def nm(self) -> tuple[int, int] | None:
        return parse_nm(self.pattern)
