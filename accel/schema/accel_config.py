"""AccelConfig: one acceleration setup: quantization, sparsity, speculation and CoT, plus runtime switches."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from accel.schema.base import AccelModel
from accel.schema.cot import CoTConfig
from accel.schema.quantization import QuantizationProfile
from accel.schema.sparsity import SparsityConfig
from accel.schema.speculative import SpeculativeConfig


class AccelConfig(AccelModel):
    """The top-level config a profile file holds and AccelController.setup takes."""

    quantization: QuantizationProfile = Field(default_factory=QuantizationProfile)
    sparsity: SparsityConfig | None = None
    speculative: SpeculativeConfig | None = None
    cot_accel: CoTConfig | None = None
    enable_flash_attention: bool = True
    enable_cuda_graphs: bool = True
    metadata: dict[str, Any] = Field(default_factory=dict)
