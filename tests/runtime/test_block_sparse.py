"""The runtime's block-sparse path: which layers take it, that decode steps run the kept blocks alone with the dense
layer's outputs, stacking, and a block-pruned artifact of the bundled model generating the dense model's tokens."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from accel.runtime import block_sparse
from accel.runtime.block_sparse import BlockSparseLinear, with_block_sparsity
from accel.runtime.cpu import cpu_capability
from accel.runtime.quant_backend import DenseLinear, KernelSelector, fuse_linears, runtime_linear


@pytest.fixture(autouse=True)
def small_layers_too(monkeypatch):
    """The layers here are far under MIN_WEIGHTS (the size where the op pays on the CPU); lift the floor."""
    monkeypatch.setattr(block_sparse, "MIN_WEIGHTS", 0)


class CountingSelector:
    """The CPU's kernel choices, with block_sparse_linear's calls counted, and a capability of our choosing."""

    def __init__(self, formats: list[str]) -> None:
        self.device = torch.device("cpu")
        self.capability = cpu_capability().model_copy(update={"supported_sparse_formats": formats})
        self.calls = 0
        self._cpu = KernelSelector("cpu")

    def choose(self, op: str):
        choice = self._cpu.choose(op)

        def counted(*args, **kwargs):
            self.calls += 1
            return choice.impl(*args, **kwargs)

        return dataclasses.replace(choice, impl=counted)


def block_pruned(
    out_features: int, in_features: int, block: tuple[int, int], kept: float, seed: int = 0, pattern: str = "block"
) -> nn.Linear:
    """An nn.Linear keeping `kept` of its blocks (the first ones of a random order), with the mask, pattern and
    block shape load_artifact attaches."""
    gen = torch.Generator().manual_seed(seed)
    grid = (math.ceil(out_features / block[0]), math.ceil(in_features / block[1]))
    order = torch.randperm(grid[0] * grid[1], generator=gen)
    keep = torch.zeros(grid[0] * grid[1], dtype=torch.bool)
    keep[order[: round(kept * len(order))]] = True
    mask = keep.view(grid).repeat_interleave(block[0], 0).repeat_interleave(block[1], 1)
    mask = mask[:out_features, :in_features]
    linear = nn.Linear(in_features, out_features)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(out_features, in_features, generator=gen) * mask)
    linear.accel_sparse_mask, linear.accel_sparse_pattern, linear.accel_sparse_block_shape = mask, pattern, block
    return linear


def test_a_block_pruned_layer_decodes_through_the_kept_blocks():
    linear = block_pruned(76, 200, (16, 32), kept=0.2)  # partial edge blocks both ways
    kernels = CountingSelector(["block"])
    runtime = runtime_linear(linear, kernels, torch.float32)
    assert isinstance(runtime, BlockSparseLinear)
    assert (runtime.op, runtime.backend) == ("block_sparse_linear", "reference")
    grid = math.ceil(76 / 16) * math.ceil(200 / 32)
    assert runtime.blocks.shape == (round(0.2 * grid), 16, 32)
    gen = torch.Generator().manual_seed(1)
    ms = (1, 2, 9)
    with torch.no_grad():
        for m in ms:
            x = torch.randn(1, m, 200, generator=gen)
            torch.testing.assert_close(runtime(x), linear(x), rtol=1e-5, atol=1e-5)
    assert kernels.calls == sum(m <= runtime.SPARSE_MAX_M for m in ms) > 0  # larger M: the dense weight


@pytest.mark.parametrize(
    ("kept", "pattern", "formats", "block_shape"),
    [
        (0.75, "block", ["block"], (16, 16)),  # too many blocks kept for skipping to pay
        (0.25, "unstructured", ["block"], (16, 16)),
        (0.25, "block", [], (16, 16)),  # the device does not run the block format
        (0.25, "block", ["block"], None),  # no block shape came with the mask
    ],
)
def test_layers_the_block_path_does_not_serve_stay_dense(kept, pattern, formats, block_shape):
    linear = block_pruned(64, 96, (16, 16), kept, pattern=pattern)
    linear.accel_sparse_block_shape = block_shape
    assert type(runtime_linear(linear, CountingSelector(formats), torch.float32)) is DenseLinear


def test_the_limits_count_kept_blocks_and_weights(monkeypatch):
    linear = block_pruned(64, 64, (32, 32), kept=0.25)  # 1 of 4 blocks
    dense = DenseLinear(linear.weight.detach())
    kernels = CountingSelector(["block"])
    assert type(runtime_linear(nn.Linear(64, 64), kernels, torch.float32)) is DenseLinear  # no mask
    assert isinstance(with_block_sparsity(linear, dense, kernels), BlockSparseLinear)
    monkeypatch.setattr(block_sparse, "MAX_KEPT_FRACTION", 0.24)
    assert with_block_sparsity(linear, dense, kernels) is dense
    monkeypatch.setattr(block_sparse, "MAX_KEPT_FRACTION", 0.25)
    monkeypatch.setattr(block_sparse, "MIN_WEIGHTS", 64 * 64 + 1)
    assert with_block_sparsity(linear, dense, kernels) is dense


def test_stacked_block_sparse_layers_equal_their_parts():
    kernels = CountingSelector(["block"])
    parts = [runtime_linear(block_pruned(n, 96, (16, 32), 0.2, seed=n), kernels, torch.float32) for n in (64, 32, 40)]
    assert all(isinstance(part, BlockSparseLinear) for part in parts)
    fused = fuse_linears(parts)
    assert isinstance(fused, BlockSparseLinear) and fused.out_features == 136
    assert len(fused.blocks) == sum(len(part.blocks) for part in parts)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in (1, 8):  # the kept blocks, then the dense weights
            x = torch.randn(m, 96, generator=gen)
            torch.testing.assert_close(fused(x), torch.cat([part(x) for part in parts], dim=-1))


def test_stacking_is_refused_where_block_rows_would_overlap_or_differ():
    kernels = CountingSelector(["block"])

    def part(n, block):
        layer = runtime_linear(block_pruned(n, 96, block, 0.2), kernels, torch.float32)
        assert isinstance(layer, BlockSparseLinear)
        return layer

    assert fuse_linears([part(40, (16, 32)), part(32, (16, 32))]) is None  # 40 rows end in a partial block row
    assert fuse_linears([part(32, (16, 32)), part(64, (32, 32))]) is None  # block shapes differ
    assert fuse_linears([part(32, (16, 32)), DenseLinear(torch.randn(32, 96))]) is None


# ------------------------------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def block_artifact(tmp_path_factory):
    """The bundled model, magnitude-pruned to 20% of its 32x32 blocks, saved as an artifact with its compact form."""
    from accel.plugins import get_registry
    from accel.runtime.artifact import save_artifact
    from accel.runtime.loaders import load_model
    from accel.schema import AccelConfig, SparsityConfig
    from accel.sparsity.pipeline import prune_model

    model, tokenizer = load_model(dtype=torch.float32)
    sparsity = SparsityConfig(pattern="block", ratio=0.8, block_shape=(32, 32))
    masks = prune_model(model, tokenizer, sparsity, get_registry(), progress=False).masks
    root = tmp_path_factory.mktemp("block") / "a"
    save_artifact(model, tokenizer, root, AccelConfig(sparsity=sparsity), source="bundled", sparse_masks=masks)
    return root, tokenizer


@pytest.mark.slow
def test_block_pruned_artifact_decodes_the_dense_with_zeros_tokens(block_artifact, monkeypatch):
    from accel.runtime.generate import Generator
    from accel.runtime.quant_backend import load_for_inference

    root, tokenizer = block_artifact
    sparse = load_for_inference(root, dtype=torch.float32)  # MIN_WEIGHTS lifted: every layer
    linears = [m for m in sparse.modules() if isinstance(m, BlockSparseLinear)]
    assert len(linears) == 30 * 4  # stacked q|k|v and gate|up, o and down, in 30 layers
    assert sparse.kernel_meta()["block_sparse_linear"] == "reference"
    monkeypatch.undo()  # the measured floor: no layer of the bundled model is large enough for the op to pay
    dense = load_for_inference(root, dtype=torch.float32)
    assert not any(isinstance(m, BlockSparseLinear) for m in dense.modules())

    ids = tokenizer("The capital of France is a city that").input_ids
    steps = [553, 719, 30]
    logits = []
    for runtime in (dense, sparse):
        cache = runtime.new_cache(1, len(ids) + len(steps))
        with torch.no_grad():
            got = [runtime.prefill(torch.tensor([ids]), torch.tensor([len(ids)]), cache, all_logits=True)[0]]
            got += [runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps]
        logits.append(torch.cat(got))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    tokens = [Generator(runtime, max_seq=48).generate([ids], 12).tokens for runtime in (dense, sparse)]
    assert tokens[1] == tokens[0]
