"""Contract checks every registered quant method, sparse format, pruning method, draft strategy and kernel backend
must pass.

Plugin authors run them from their own test suite (scikit-learn's parametrize_with_checks is the model):

    from accel.testing import parametrize_with_checks, records_of

    @parametrize_with_checks(records_of("accel-mything"))
    def test_conformance(record, check):
        check(record)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from accel.plugins.records import (
    NAME_PATTERN,
    DraftStrategySpec,
    KernelBackendSpec,
    PruningMethodSpec,
    QuantMethodSpec,
    Record,
    SparseFormatSpec,
)
from accel.quantization.method import LinearStats, QuantMethod
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs
from accel.runtime.ops import OPS
from accel.schema import CapabilityDescriptor, SpeculativeConfig
from accel.sparsity.method import PrunedWeight, PruningMethod, SparsityTarget
from accel.speculative.draft import Draft, DraftStrategy

Check = Callable[[Any], None]

# Torch device string for each CapabilityDescriptor.device_type (ROCm's torch calls DCUs "cuda").
TORCH_DEVICE = {"cpu": "cpu", "cuda": "cuda", "dcu": "cuda", "npu": "npu", "mlu": "mlu", "xpu": "xpu"}
SPARSE_PATTERNS = ("2:4", "4:8", "1:4", "block", "unstructured")


def check_name_and_description(record: Record) -> None:
    assert NAME_PATTERN.match(record.name), f"name {record.name!r} must match {NAME_PATTERN.pattern}"
    assert record.description.strip(), f"{record.name}: description must say what it is"


# Quant methods.
def _calibration(in_features: int, gen: torch.Generator) -> LinearStats:
    inputs = torch.randn(256, in_features, generator=gen, dtype=torch.float64)
    return LinearStats(hessian=inputs.T @ inputs / len(inputs), inputs=inputs, num_tokens=len(inputs))


def _build_method(spec: QuantMethodSpec) -> QuantMethod:
    method = spec.factory(spec.config_model())
    assert isinstance(method, QuantMethod), f"{spec.name}: factory must return a QuantMethod, got {method!r}"
    return method


def check_quant_config_round_trip(spec: QuantMethodSpec) -> None:
    config = spec.config_model()
    again = spec.config_model.model_validate_json(config.model_dump_json())
    assert again == config, f"{spec.name}: config does not survive a JSON round trip"


def check_quant_codes_and_error(spec: QuantMethodSpec) -> None:
    """Codes on the grid, scales shaped [out, ceil(in/g)] (partial last group), bounded error."""
    method = _build_method(spec)
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(48, 80, generator=gen, dtype=torch.float64)
    stats = _calibration(80, gen) if spec.requires_calibration else None
    for bits, bound in ((8, 0.02), (4, 0.3)):
        if bits not in spec.weight_bits:
            continue
        for symmetric in (True, False):
            args = WeightQuantArgs(num_bits=bits, symmetric=symmetric, strategy="group", group_size=32)
            qw = method.quantize_weight(weight, args, stats)
            assert isinstance(qw, QuantizedWeight), f"{spec.name}: quantize_weight must return QuantizedWeight"
            assert qw.q.shape == weight.shape and qw.q.dtype == torch.int8
            assert int(qw.q.min()) >= args.qmin and int(qw.q.max()) <= args.qmax, "codes off the grid"
            assert qw.scale.shape == (48, 3), f"scale shape {tuple(qw.scale.shape)}, expected (48, 3)"
            assert (qw.zero_point is None) == symmetric, "zero_point must be None exactly when symmetric"
            error = float((qw.dequantize(torch.float64) - weight).norm() / weight.norm())
            assert error < bound, f"{spec.name} w{bits} sym={symmetric}: relative error {error:.3f} >= {bound}"


def check_quant_deterministic(spec: QuantMethodSpec) -> None:
    method = _build_method(spec)
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = _calibration(64, torch.Generator().manual_seed(2)) if spec.requires_calibration else None
    args = WeightQuantArgs(num_bits=max(b for b in spec.weight_bits if b <= 8), group_size=32)
    first, second = method.quantize_weight(weight, args, stats), method.quantize_weight(weight, args, stats)
    assert torch.equal(first.q, second.q) and torch.equal(first.scale, second.scale), "not deterministic"


def check_quant_needs_calibration(spec: QuantMethodSpec) -> None:
    """A method that declares requires_calibration must refuse to run without it."""
    if not spec.requires_calibration:
        return
    method = _build_method(spec)
    try:
        method.quantize_weight(torch.randn(8, 32, dtype=torch.float64), WeightQuantArgs(group_size=32), None)
    except ValueError:
        return
    raise AssertionError(f"{spec.name}: requires_calibration but ran without stats")


# Sparse formats.
def check_sparse_masks(spec: SparseFormatSpec) -> None:
    """For each pattern it handles: a bool mask of the right shape and density that passes its own
    validator, keeps higher scores than it drops, and rejects a mask that keeps one weight too many."""
    handled = [p for p in SPARSE_PATTERNS if spec.handles(p)]
    assert handled, f"{spec.name}: handles none of {SPARSE_PATTERNS}"
    scores = torch.rand(32, 64, generator=torch.Generator().manual_seed(0))
    for pattern in handled:
        ratio = 0.5 if ":" not in pattern else 1 - int(pattern.split(":")[0]) / int(pattern.split(":")[1])
        mask = spec.select(scores, pattern, ratio, (8, 8))
        assert mask.dtype == torch.bool and mask.shape == scores.shape, f"{pattern}: bad mask"
        assert spec.violations(mask, pattern, (8, 8)) == [], f"{pattern}: own mask fails validation"
        density = float(mask.float().mean())
        assert abs(density - (1 - ratio)) <= 1 / 16, f"{pattern}: density {density:.3f}, want {1 - ratio:.3f}"
        kept, dropped = scores[mask], scores[~mask]
        assert kept.mean() > dropped.mean(), f"{pattern}: keeps lower scores than it drops"
        if pattern != "unstructured":
            # Keeping one more weight than the format allows must be caught.
            broken = mask.clone()
            broken.view(-1)[int((~mask).view(-1).nonzero()[0])] = True
            assert spec.violations(broken, pattern, (8, 8)), f"{pattern}: a mask off the pattern passed"


# Pruning methods.
PRUNING_CASES = (("2:4", 0.5), ("4:8", 0.5), ("unstructured", 0.5), ("block", 0.5))


def _build_pruner(spec: PruningMethodSpec) -> PruningMethod:
    method = spec.factory(spec.config_model())
    assert isinstance(method, PruningMethod), f"{spec.name}: factory must return a PruningMethod, got {method!r}"
    return method


def _target(pattern: str, ratio: float) -> SparsityTarget:
    from accel.sparsity.hooks import accel_register_sparse_formats  # core's formats, as the registry holds them

    spec = next(f for f in accel_register_sparse_formats() if f.handles(pattern))
    return SparsityTarget(spec, pattern, ratio, (8, 8))


def _pruning_problem(seed: int) -> tuple[torch.Tensor, LinearStats]:
    """A weight [48, 128] and calibration stats of correlated inputs whose channels differ in scale."""
    gen = torch.Generator().manual_seed(seed)
    scales = 10 ** torch.linspace(-1, 1, 128)[torch.randperm(128, generator=gen)]
    inputs = (torch.randn(512, 128, generator=gen) @ (torch.eye(128) + 0.3 * torch.randn(128, 128, generator=gen)))
    inputs = inputs * scales
    stats = LinearStats(hessian=inputs.T @ inputs / len(inputs), inputs=inputs, num_tokens=len(inputs),
                        channel_norms=inputs.norm(dim=0))
    return torch.randn(48, 128, generator=gen), stats


def check_pruning_config_round_trip(spec: PruningMethodSpec) -> None:
    config = spec.config_model()
    again = spec.config_model.model_validate_json(config.model_dump_json())
    assert again == config, f"{spec.name}: config does not survive a JSON round trip"


def check_pruning_masks_and_error(spec: PruningMethodSpec) -> None:
    """For each pattern: a bool mask in the format at the right density, exact zeros where dropped, finite kept
    weights, and a layer output error ||W X^T - W' X^T|| at most 1.25x magnitude pruning's."""
    method = _build_pruner(spec)
    weight, stats = _pruning_problem(0)
    for pattern, ratio in PRUNING_CASES:
        target = _target(pattern, ratio)
        pruned = method.prune_weight(weight, target, stats)
        assert isinstance(pruned, PrunedWeight), f"{spec.name}: prune_weight must return a PrunedWeight"
        mask = pruned.mask
        assert mask.dtype == torch.bool and mask.shape == weight.shape, f"{pattern}: mask must be bool [out, in]"
        assert pruned.weight.shape == weight.shape and torch.isfinite(pruned.weight).all(), f"{pattern}: bad weight"
        assert target.violations(mask) == [], f"{spec.name} {pattern}: mask off the format: {target.violations(mask)}"
        assert bool((pruned.weight[~mask] == 0).all()), f"{spec.name} {pattern}: dropped weights are not zero"
        density = float(mask.float().mean())
        assert abs(density - (1 - ratio)) <= 1 / 16, f"{spec.name} {pattern}: density {density:.3f}"
        inputs = stats.inputs
        error = float(((weight - pruned.weight) @ inputs.T).norm())
        baseline = float(((weight - weight * target.select(weight.abs())) @ inputs.T).norm())
        assert error <= 1.25 * baseline, (
            f"{spec.name} {pattern}: output error {error:.3g} > 1.25x magnitude pruning's {baseline:.3g}"
        )


def check_pruning_deterministic(spec: PruningMethodSpec) -> None:
    method = _build_pruner(spec)
    weight, stats = _pruning_problem(1)
    target = _target("2:4", 0.5)
    first, second = method.prune_weight(weight, target, stats), method.prune_weight(weight, target, stats)
    assert torch.equal(first.mask, second.mask) and torch.equal(first.weight, second.weight), "not deterministic"


def check_pruning_needs_calibration(spec: PruningMethodSpec) -> None:
    """A method that declares requires_calibration must refuse to run without it."""
    if not spec.requires_calibration:
        return
    try:
        _build_pruner(spec).prune_weight(torch.randn(8, 32), _target("2:4", 0.5), None)
    except ValueError:
        return
    raise AssertionError(f"{spec.name}: requires_calibration but ran without stats")


# Draft strategies.
def check_draft_proposals(spec: DraftStrategySpec) -> None:
    """Proposals are 1-D int64, at most k long; probabilities exactly when not deterministic."""
    if spec.needs:
        return  # needs resources (a model) the kit cannot make up; the plugin's own tests cover it
    drafter = spec.factory(SpeculativeConfig(strategy=spec.name))
    assert isinstance(drafter, DraftStrategy), f"{spec.name}: factory must return a DraftStrategy"
    tokens = torch.tensor([5, 6, 7, 8, 5, 6, 7, 8, 5, 6], dtype=torch.long)
    for k in (1, 3, 8):
        draft = drafter.propose(tokens, k)
        assert isinstance(draft, Draft)
        assert draft.tokens.ndim == 1 and draft.tokens.dtype == torch.long and len(draft.tokens) <= k
        if spec.deterministic:
            assert draft.probs is None, f"{spec.name}: deterministic drafter returned probabilities"
        else:
            assert draft.probs is not None and draft.probs.shape[0] == len(draft.tokens)
            assert torch.allclose(draft.probs.sum(-1), torch.ones(len(draft.tokens), dtype=draft.probs.dtype))


# Kernel backends.
def check_backend_probe(spec: KernelBackendSpec) -> None:
    """is_available() is a cheap bool that never raises; capability() is valid when available."""
    available = spec.is_available()
    assert isinstance(available, bool), f"{spec.name}: is_available must return bool"
    if available:
        capability = spec.capability()
        assert isinstance(capability, CapabilityDescriptor)
        assert capability.device_type == spec.device_type or spec.device_type == "cpu"


def check_backend_kernels_match_reference(spec: KernelBackendSpec) -> None:
    """Every kernel is a known op and, where the device is present, matches the reference: on its output, or for
    an op that mutates its arguments (OpSpec.observe), on what the reference and the kernel, each run on its own
    clone of the inputs, leave in them."""
    kernels = spec.kernels()
    unknown = set(kernels) - set(OPS)
    assert not unknown, f"{spec.name}: kernels for unknown ops {sorted(unknown)}; known: {sorted(OPS)}"
    if not spec.is_available():
        return
    device = TORCH_DEVICE[spec.capability().device_type]
    for op_name, kernel in kernels.items():
        op = OPS[op_name]
        for case, make_inputs in enumerate(op.input_makers):
            for dtype in (torch.float32, torch.bfloat16):
                args = make_inputs(torch.Generator().manual_seed(0), device, dtype)
                expected = op.result(op.reference, args).float()
                got = op.result(kernel, args)
                where = f"{spec.name}.{op_name} (inputs {case}, {dtype})"
                assert got.shape == expected.shape, f"{where}: shape {got.shape} != {expected.shape}"
                assert torch.isfinite(got).all(), f"{where}: non-finite output"
                scale = 1.0 if dtype == torch.float32 else 4.0
                torch.testing.assert_close(got.float(), expected, rtol=op.rtol * scale, atol=op.atol * scale)


CHECKS: dict[type, tuple[Check, ...]] = {
    QuantMethodSpec: (
        check_name_and_description, check_quant_config_round_trip, check_quant_codes_and_error,
        check_quant_deterministic, check_quant_needs_calibration,
    ),
    SparseFormatSpec: (check_name_and_description, check_sparse_masks),
    PruningMethodSpec: (
        check_name_and_description, check_pruning_config_round_trip, check_pruning_masks_and_error,
        check_pruning_deterministic, check_pruning_needs_calibration,
    ),
    DraftStrategySpec: (check_name_and_description, check_draft_proposals),
    KernelBackendSpec: (
        check_name_and_description, check_backend_probe, check_backend_kernels_match_reference,
    ),
}


def checks_for(record: Record) -> tuple[Check, ...]:
    return CHECKS[type(record)]


def records_of(distribution: str) -> list[Record]:
    """Every record a distribution registered, found through the real entry points and hooks."""
    from accel.plugins.registry import load_registry

    registry = load_registry()
    found = [
        entry.record
        for table in registry.entries.values()
        for entry in table.values()
        if entry.plugin.distribution == distribution
    ]
    failed = [p for p in registry.failures if p.distribution == distribution]
    assert not failed, f"{distribution}: plugin failed to load: {failed[0].error}"
    assert found, f"no records registered by distribution {distribution!r}; is it installed?"
    return found


def parametrize_with_checks(records: Sequence[Record]) -> Any:
    """A pytest.mark.parametrize over (record, check) for every record and each check that applies."""
    import pytest

    cases = [(record, check) for record in records for check in checks_for(record)]
    ids = [f"{record.kind}:{record.name}:{check.__name__}" for record, check in cases]
    return pytest.mark.parametrize(("record", "check"), cases, ids=ids)
