"""The conformance kit passes core's built-ins and catches implementations that break the contract."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.plugins.records import DraftStrategySpec, KernelBackendSpec, QuantMethodSpec
from accel.quantization import QuantizedWeight, QuantMethod
from accel.runtime.kv_ops import kv_cache_write
from accel.schema import CapabilityDescriptor
from accel.sparsity.method import PrunedWeight, PruningMethod
from accel.speculative.draft import Draft, DraftStrategy
from accel.testing import checks_for, parametrize_with_checks

BUILTINS = [
    entry.record
    for table in load_registry(PluginPolicy()).entries.values()
    for entry in table.values()
    if entry.plugin.distribution == "accel"
]


@parametrize_with_checks(BUILTINS)
def test_builtins_conform(record, check):
    check(record)


def _fails(record) -> bool:
    """True when at least one of the kit's checks rejects the record."""
    for check in checks_for(record):
        try:
            check(record)
        except AssertionError:
            return True
    return False


class OffGrid(QuantMethod):
    def quantize_weight(self, weight, args, stats=None):
        q = torch.full(weight.shape, args.qmin - 1 if args.num_bits < 8 else -128, dtype=torch.int8)
        q[0, 0] = args.qmax if args.num_bits == 8 else args.qmin - 1  # off the 4-bit grid
        return QuantizedWeight(q, torch.ones(weight.shape[0], 3, dtype=weight.dtype), None, args)


def test_kit_rejects_codes_off_the_grid():
    spec = QuantMethodSpec(name="offgrid", description="broken", factory=lambda _c: OffGrid())
    assert _fails(spec)


def test_kit_rejects_a_format_that_keeps_the_wrong_weights():
    nm = load_registry(PluginPolicy()).sparse_formats()["nm"]
    inverted = replace(nm, name="inverted", select=lambda s, p, r, b: nm.select(-s, p, r, b))
    assert _fails(inverted)


def test_kit_rejects_a_pruner_that_keeps_the_smallest_weights():
    magnitude = load_registry(PluginPolicy()).pruning_methods()["magnitude"]
    inverted = replace(magnitude, name="inverted", factory=lambda _c: KeepSmallest())
    assert _fails(inverted)


class KeepSmallest(PruningMethod):
    def prune_weight(self, weight, target, stats=None):
        mask = target.select(-weight.abs())
        return PrunedWeight(weight * mask, mask)


class TooLong(DraftStrategy):
    def propose(self, tokens, k):
        return Draft(tokens=torch.zeros(k + 1, dtype=torch.long))


def test_kit_rejects_a_drafter_that_overshoots_k():
    assert _fails(DraftStrategySpec(name="toolong", description="broken", factory=lambda *_a, **_k: TooLong()))


def test_kit_rejects_a_kernel_that_disagrees_with_the_reference():
    def wrong(x, q, scale, zero_point, group_size, bias=None):
        return torch.zeros(x.shape[0], q.shape[0], dtype=x.dtype)

    spec = KernelBackendSpec(
        name="wrong", description="broken", device_type="cpu", is_available=lambda: True,
        capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"),
        kernels=lambda: {"dequant_linear": wrong},
    )
    assert _fails(spec)


def test_kit_rejects_kernels_for_unknown_ops():
    spec = KernelBackendSpec(
        name="unknown-op", description="broken", device_type="npu", is_available=lambda: False,
        capability=lambda: CapabilityDescriptor(device_name="npu", device_type="npu"),
        kernels=lambda: {"made_up_op": lambda: None},
    )
    with pytest.raises(AssertionError, match="unknown ops"):
        checks_for(spec)[-1](spec)



def cpu_backend(name: str, kernels: dict) -> KernelBackendSpec:
    return KernelBackendSpec(
        name=name, description="test backend", device_type="cpu", is_available=lambda: True,
        capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"), kernels=lambda: kernels,
    )


def test_kit_judges_a_mutating_op_on_what_it_stores():
    check = checks_for(cpu_backend("x", {}))[-1]
    check(cpu_backend("right", {"kv_cache_write": kv_cache_write}))  # the reference itself passes

    def nothing(*args):  # stores nothing: passes only if the kit let the reference's write leak into its inputs
        return None

    def k_only(k, v, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt):
        kv_cache_write(k, k, positions, k_codes, k_scale, k_zero, v_codes, v_scale, v_zero, fmt)  # V stored as K

    def one_code_off(*args):
        kv_cache_write(*args)
        codes = args[3].view(torch.uint8)
        codes[0, 0, 17, 0] ^= 1  # the lowest bit of one stored byte of row 0's first new token

    for name, kernel in (("nothing", nothing), ("k-only", k_only), ("one-code-off", one_code_off)):
        with pytest.raises(AssertionError):
            check(cpu_backend(name, {"kv_cache_write": kernel}))
