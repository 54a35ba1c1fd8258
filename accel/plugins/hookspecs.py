"""The hooks a plugin may implement. Core's built-ins implement them too.

Registration hooks return a list of typed records (see accel.plugins.records); every plugin's list is
collected. `accel_select_kernel` is firstresult: the first backend that can run an op on a device answers.
`accel_kernel_selected` wraps the selection so tracing and kernel meta see every choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import typer

    from accel.plugins.records import (
        DraftStrategySpec,
        KernelBackendSpec,
        KernelChoice,
        PruningMethodSpec,
        QuantMethodSpec,
        SparseFormatSpec,
    )
    from accel.schema import CapabilityDescriptor

PROJECT = "accel"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def accel_register_quant_methods() -> list[QuantMethodSpec]:
    """Weight/activation quantization algorithms this plugin provides (GPTQ, AWQ, RTN, ...)."""


@hookspec
def accel_register_sparse_formats() -> list[SparseFormatSpec]:
    """Sparsity formats this plugin provides: how a mask is chosen from scores and checked."""


@hookspec
def accel_register_pruning_methods() -> list[PruningMethodSpec]:
    """Pruning criteria this plugin provides (magnitude, Wanda, SparseGPT): how a weight's mask is chosen."""


@hookspec
def accel_register_draft_strategies() -> list[DraftStrategySpec]:
    """Speculative-decoding drafters this plugin provides (n-gram, draft model, layer skip, ...)."""


@hookspec
def accel_register_kernel_backends() -> list[KernelBackendSpec]:
    """Kernel backends (a device family and its kernels) this plugin provides."""


@hookspec
def accel_register_commands(app: typer.Typer) -> None:
    """Add commands to `sage infer`: `app.command()(fn)` or `app.add_typer(sub, name=...)`."""


@hookspec(firstresult=True)
def accel_select_kernel(op: str, capability: CapabilityDescriptor) -> KernelChoice | None:
    """Who runs `op` on this device: return a KernelChoice, or None to let the next backend answer."""
