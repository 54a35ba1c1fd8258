"""The hook accel calls: register the `smooth_quant` quant method."""

from __future__ import annotations

from accel.plugins import QuantMethodSpec, hookimpl
from accel_smoothquant.method import SmoothQuant, SmoothQuantConfig


@hookimpl
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    return [
        QuantMethodSpec(
            name="smooth_quant",
            description="SmoothQuant: migrate activation outliers into the weights (s = max|X|^α / max|W|^(1-α)), "
            "then round-to-nearest int8/fp8 weights",
            factory=lambda config: SmoothQuant(SmoothQuantConfig.model_validate(config.model_dump())),
            config_model=SmoothQuantConfig,
            requires_calibration=True,
            weight_bits=(8,),
        )
    ]
