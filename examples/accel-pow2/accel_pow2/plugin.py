"""The hooks accel calls: register the method, and add `sage infer pow2-info`."""

from __future__ import annotations

import json

import typer

from accel.plugins import QuantMethodSpec, hookimpl
from accel_pow2.method import Pow2Config, Pow2RTN


@hookimpl
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    return [
        QuantMethodSpec(
            name="pow2",
            description="round-to-nearest with power-of-two (E8M0) scales",
            factory=lambda config: Pow2RTN(Pow2Config.model_validate(config.model_dump())),
            config_model=Pow2Config,
        )
    ]


@hookimpl
def accel_register_commands(app: typer.Typer) -> None:
    @app.command("pow2-info")
    def pow2_info() -> None:
        """Show the pow2 method's settings schema."""
        typer.echo(json.dumps(Pow2Config.model_json_schema(), indent=2))
