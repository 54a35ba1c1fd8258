"""The hook accel calls: register the `awq` quant method."""

from __future__ import annotations

from accel.plugins import QuantMethodSpec, hookimpl
from accel_awq.method import AWQ, AWQConfig


@hookimpl
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    return [
        QuantMethodSpec(
            name="awq",
            description="AWQ: activation-aware per-channel scale search, then a per-group clipping search",
            factory=lambda config: AWQ(AWQConfig.model_validate(config.model_dump())),
            config_model=AWQConfig,
            requires_calibration=True,
        )
    ]
