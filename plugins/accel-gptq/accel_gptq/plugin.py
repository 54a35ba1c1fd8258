"""The hook accel calls: register the `gptq` quant method."""

from __future__ import annotations

from accel.plugins import QuantMethodSpec, hookimpl
from accel_gptq.config import GPTQConfig
from accel_gptq.gptq import GPTQ


@hookimpl
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    return [
        QuantMethodSpec(
            name="gptq",
            description="GPTQ: column-by-column rounding with inverse-Hessian error compensation (calibrated)",
            factory=lambda config: GPTQ(GPTQConfig.model_validate(config.model_dump())),
            config_model=GPTQConfig,
            requires_calibration=True,
        )
    ]
