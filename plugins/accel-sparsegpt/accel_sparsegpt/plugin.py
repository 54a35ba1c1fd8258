"""The hook accel calls: register the `sparsegpt` and `wanda` pruning methods."""

from __future__ import annotations

from accel.plugins import EmptyConfig, PruningMethodSpec, hookimpl
from accel_sparsegpt.config import SparseGPTConfig
from accel_sparsegpt.sparsegpt import SparseGPT
from accel_sparsegpt.wanda import Wanda


@hookimpl
def accel_register_pruning_methods() -> list[PruningMethodSpec]:
    return [
        PruningMethodSpec(
            name="sparsegpt",
            description="SparseGPT: OBS pruning with inverse-Hessian weight updates and adaptive masks (calibrated)",
            factory=lambda config: SparseGPT(SparseGPTConfig.model_validate(config.model_dump())),
            config_model=SparseGPTConfig,
            requires_calibration=True,
        ),
        PruningMethodSpec(
            name="wanda",
            description="Wanda: keep the largest |W_ij| * ||X_j||_2 in each output row (calibrated, no update)",
            factory=lambda _config: Wanda(),
            config_model=EmptyConfig,
            requires_calibration=True,
        ),
    ]
