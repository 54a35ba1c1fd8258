"""QuantizationProfile: what to quantize, to how many bits, with which method, calibrated on what."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from accel.schema.base import AccelModel

WeightBits = Literal[2, 3, 4, 8, 16]
ActivationBits = Literal[8, 16]
KVBits = Literal[4, 8, 16]
NumberType = Literal["int", "float"]
SparsityPattern = str  # "none", "unstructured", "block", or "N:M" (2:4, 4:8, ...); checked below

_NM = re.compile(r"^(\d+):(\d+)$")
SPARSITY_PATTERNS_DOC = "'none', 'unstructured', 'block', or N:M with 0 < N < M (e.g. '2:4', '4:8')"


def parse_nm(pattern: str) -> tuple[int, int] | None:
    """'2:4' -> (2, 4); anything that is not N:M -> None."""
    match = _NM.match(pattern)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_sparsity_pattern(pattern: str) -> str:
    """Validate a sparsity pattern string; the error lists what is allowed."""
    if pattern in ("none", "unstructured", "block"):
        return pattern
    nm = parse_nm(pattern)
    if nm is None or not 0 < nm[0] < nm[1]:
        raise ValueError(f"unknown sparsity pattern {pattern!r}; allowed: {SPARSITY_PATTERNS_DOC}")
    return pattern


class LayerOverride(AccelModel):
    """Per-layer settings that replace the profile's for modules matching a target (mixed precision).

    Unset fields inherit from the profile. `skip=True` leaves the matching layers in full precision.
    """

    weight_bits: WeightBits | None = None
    group_size: int | None = None
    symmetric: bool | None = None
    method: str | None = None
    skip: bool = False

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int | None) -> int | None:
        if value is not None and value != -1 and value <= 0:
            raise ValueError(f"group_size must be -1 (one group per row) or a positive integer, got {value}")
        return value


class QuantizationProfile(AccelModel):
    """One quantization recipe: weight / activation / KV precision, method, granularity, calibration.

    Precision follows compressed-tensors' QuantizationArgs: a bit width plus a number type, so
    `weight_bits=8, weight_type="float"` is fp8 e4m3. `group_size=-1` means one group per output row
    (per-channel), as GPTQ writes it; a group size that does not divide the input dimension gives a
    partial last group (ceil(in / group_size) groups).
    """

    # Precision.
    weight_bits: WeightBits = 16
    weight_type: NumberType = "int"
    activation_bits: ActivationBits = 16
    activation_type: NumberType = "int"
    activation_dynamic: bool = True
    activation_strategy: Literal["token", "tensor"] = "token"
    kv_bits_prefill: KVBits = 16
    kv_bits_decode: KVBits = 16
    kv_type: NumberType = "int"
    kv_strategy: Literal["token", "channel", "kivi"] = "token"

    # Method and granularity. `method_config` holds the method's own settings (validated against the
    # config model its plugin registers), e.g. {"dampening_frac": 0.01, "act_order": true} for GPTQ.
    method: str = "none"
    method_config: dict[str, Any] = Field(default_factory=dict)
    weight_strategy: Literal["tensor", "channel", "group"] = "group"
    group_size: int = 128
    symmetric: bool = True

    # Sparsity carried with the profile (the SPEC puts it here; SparsityConfig holds the pruning recipe).
    sparsity_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    sparsity_pattern: SparsityPattern = "none"

    # Execution and calibration.
    kernel_backend: str = "auto"
    calibration_dataset: str = "bundled"
    calibration_samples: int = Field(default=64, gt=0)
    calibration_sequence_length: int = Field(default=256, gt=0)
    max_sequence_length: int = Field(default=4096, gt=0)

    # Mixed precision.
    overrides: dict[str, LayerOverride] = Field(default_factory=dict)
    ignore: list[str] = Field(default_factory=lambda: ["lm_head"])

    @field_validator("group_size")
    @classmethod
    def _group_size(cls, value: int) -> int:
        if value != -1 and value <= 0:
            raise ValueError(f"group_size must be -1 (one group per row) or a positive integer, got {value}")
        return value

    @field_validator("sparsity_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_sparsity_pattern(value)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9_\-]+", value):
            raise ValueError(f"method must be a lower-case plugin name such as 'gptq' or 'rtn', got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _group_size_minus_one_is_channel(cls, data: object) -> object:
        # GPTQ's convention: group_size -1 is one group per output row, i.e. the channel strategy.
        if isinstance(data, dict) and data.get("group_size") == -1 and "weight_strategy" not in data:
            return {**data, "weight_strategy": "channel"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> QuantizationProfile:
        if self.weight_type == "float" and self.weight_bits not in (8, 16):
            raise ValueError(f"weight_type 'float' needs weight_bits 8 (fp8 e4m3) or 16, got {self.weight_bits}")
        if self.activation_type == "float" and self.activation_bits != 8 and self.activation_bits != 16:
            raise ValueError("activation_type 'float' needs activation_bits 8 (fp8 e4m3) or 16")
        if self.kv_type == "float" and 4 in (self.kv_bits_prefill, self.kv_bits_decode):
            raise ValueError("kv_type 'float' has no 4-bit format; use kv_type 'int' for 4-bit KV")
        if self.group_size == -1 and self.weight_strategy == "group":
            raise ValueError("weight_strategy 'group' needs group_size > 0; group_size -1 means 'channel'")
        if self.sparsity_pattern == "none" and self.sparsity_ratio > 0:
            raise ValueError("sparsity_ratio > 0 needs a sparsity_pattern other than 'none'")
        if self.method == "none" and self.weight_bits < 16:
            raise ValueError(
                f"weight_bits {self.weight_bits} needs a quantization method (e.g. 'rtn', 'gptq', 'awq'), "
                "not 'none'"
            )
        return self

    @property
    def quantizes_weights(self) -> bool:
        return self.weight_bits < 16

    @property
    def quantizes_activations(self) -> bool:
        return self.activation_bits < 16

    @property
    def quantizes_kv(self) -> bool:
        return min(self.kv_bits_prefill, self.kv_bits_decode) < 16

    def scheme_name(self) -> str:
        """Short name in the field's words: 'w4a16', 'w8a8-fp8', 'w16a16-kv8', ..."""
        name = f"w{self.weight_bits}a{self.activation_bits}"
        if self.weight_type == "float" or self.activation_type == "float":
            name += "-fp8"
        if self.quantizes_kv:
            name += f"-kv{min(self.kv_bits_prefill, self.kv_bits_decode)}"
            if self.kv_type == "float":
                name += "fp8"
        if self.sparsity_pattern != "none":
            name += f"-{self.sparsity_pattern}"
        return name
