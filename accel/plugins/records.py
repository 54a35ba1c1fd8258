"""The typed records plugins register, and what the registry knows about each loaded plugin.

A record names a thing (`name` is what a profile or flag refers to), says what it is for, and carries the
factory or callables that do the work. The registry adds the distribution that registered it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel

if TYPE_CHECKING:
    import torch

    from accel.quantization.method import QuantMethod
    from accel.schema import CapabilityDescriptor
    from accel.sparsity.method import PruningMethod
    from accel.speculative.draft import DraftStrategy

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_\-:.]*$")


class EmptyConfig(BaseModel):
    """Config model for a method with no settings of its own."""

    model_config = {"extra": "forbid"}


@dataclass(frozen=True)
class QuantMethodSpec:
    """A quantization algorithm. `factory(config)` builds it; `config_model` holds its own settings."""

    name: str
    description: str
    factory: Callable[[BaseModel], QuantMethod]
    config_model: type[BaseModel] = EmptyConfig
    requires_calibration: bool = False
    weight_bits: tuple[int, ...] = (2, 3, 4, 8)
    kind: str = "quant_method"


@dataclass(frozen=True)
class SparseFormatSpec:
    """A sparsity format: `select(scores, pattern, ratio, block_shape)` keeps the highest scores as the
    format allows and returns a bool mask (True = kept); `violations(mask, pattern, block_shape)` lists
    why a mask does not follow the format (empty = valid). `handles(pattern)` says which patterns it owns."""

    name: str
    description: str
    handles: Callable[[str], bool]
    select: Callable[[torch.Tensor, str, float, tuple[int, int]], torch.Tensor]
    violations: Callable[[torch.Tensor, str, tuple[int, int]], list[str]]
    kind: str = "sparse_format"


@dataclass(frozen=True)
class PruningMethodSpec:
    """A pruning criterion (magnitude, Wanda, SparseGPT). `factory(config)` builds it; it picks each weight's mask
    through a registered sparse format and may update the weights it keeps. `config_model` holds its settings."""

    name: str
    description: str
    factory: Callable[[BaseModel], PruningMethod]
    config_model: type[BaseModel] = EmptyConfig
    requires_calibration: bool = False
    kind: str = "pruning_method"


@dataclass(frozen=True)
class DraftStrategySpec:
    """A speculative drafter. `factory(config, **resources)` builds it; `deterministic` drafters propose
    tokens without probabilities (verified with the one-hot rule)."""

    name: str
    description: str
    factory: Callable[..., DraftStrategy]
    deterministic: bool = True
    needs: tuple[str, ...] = ()
    kind: str = "draft_strategy"


@dataclass(frozen=True)
class KernelBackendSpec:
    """A device family's kernels. `is_available()` must be cheap and never raise; `capability()` is only
    called when it is available; `kernels()` maps op names (accel.runtime.ops) to implementations."""

    name: str
    description: str
    device_type: str
    is_available: Callable[[], bool]
    capability: Callable[[], CapabilityDescriptor]
    kernels: Callable[[], Mapping[str, Callable[..., Any]]]
    priority: int = 0
    kind: str = "kernel_backend"


@dataclass(frozen=True)
class KernelChoice:
    """The answer to 'who runs this op here': the backend, the op, the implementation, and why."""

    backend: str
    op: str
    impl: Callable[..., Any]
    reason: str = ""
    # Optional: converts a layer's weight arguments of the op once, at load, into the form `impl` reads fastest
    # (e.g. a repacked layout). Called with the op's weight arguments; returns (weight arguments, keyword
    # arguments) that the caller then passes to impl on every call. None: pass the artifact's tensors as they are.
    prepare: Callable[..., tuple[tuple[Any, ...], dict[str, Any]]] | None = None
    # Optional: whether `impl` runs its own fast kernel (rather than a correct but slower fallback) for `rows`
    # activation rows of a dtype on a device with these (prepared) weight arguments and keyword arguments; a caller
    # choosing between two ways of computing the same thing asks it. None: always.
    accepts: Callable[..., bool] | None = None
    # Optional: what the user should know about this choice on this device (e.g. that no launch was tuned for the
    # card, so the kernel runs untuned defaults); plans show it beside the layer, artifacts record it.
    note: str = ""

    def meta(self) -> dict[str, str]:
        """Kernel meta as artifacts record it."""
        meta = {"op": self.op, "backend": self.backend, "kernel": _qualname(self.impl), "reason": self.reason}
        return {**meta, "note": self.note} if self.note else meta


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


Record = QuantMethodSpec | SparseFormatSpec | PruningMethodSpec | DraftStrategySpec | KernelBackendSpec
PluginStatus = Literal["loaded", "failed", "disabled"]


@dataclass
class PluginInfo:
    """One plugin as `sage infer plugins` shows it."""

    name: str
    distribution: str
    version: str
    group: str
    module: str
    status: PluginStatus
    hooks: list[str] = field(default_factory=list)
    provides: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "group": self.group,
            "module": self.module,
            "status": self.status,
            "hooks": self.hooks,
            "provides": self.provides,
            "error": self.error,
        }
