"""Core's built-in quantization methods, registered through the same hook a plugin uses."""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import EmptyConfig, QuantMethodSpec
from accel.quantization.rtn import RTN


@hookimpl
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    return [
        QuantMethodSpec(
            name="rtn",
            description="round-to-nearest with min/max ranges (baseline, no calibration)",
            factory=lambda _config: RTN(),
            config_model=EmptyConfig,
        ),
        QuantMethodSpec(
            name="fp8",
            description="round-to-nearest onto fp8 e4m3 with absmax scales (weight_type 'float')",
            factory=lambda _config: RTN(),
            config_model=EmptyConfig,
            weight_bits=(8,),
        ),
    ]
