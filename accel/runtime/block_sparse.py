"""The runtime's block-sparse path: a block-pruned float layer whose kept blocks are few enough runs decode steps
through block_sparse_linear, which reads and multiplies the kept blocks alone; prefill keeps torch's dense matmul.

A layer takes the path when it was loaded with a block mask (artifact.load_artifact attaches the mask, pattern
"block" and block shape), its device's capability lists the "block" sparse format, a kernel runs the op there, it
keeps at most MAX_KEPT_FRACTION of its blocks and has at least MIN_WEIGHTS weights. Both limits are measured on the
CPU with the portable op in bf16, the runtime's default there (bench/results/block_sparse.md). Quantized
block-pruned layers run their dense-with-zeros format.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from accel.plugins.records import KernelChoice
from accel.runtime.ops import block_values
from accel.runtime.quant_backend import DenseLinear, KernelSelector, RuntimeLinear

__all__ = ["MAX_KEPT_FRACTION", "MIN_WEIGHTS", "BlockSparseLinear", "kept_block_index", "with_block_sparsity"]

# At M = 1 in bf16, 25% kept beats dense F.linear for every block shape (1.05-2.4x on Llama-3-8B shapes); 50% only
# with 32x32 blocks or larger, and barely (1.0-1.3x; 16x16, the default block shape: 0.57-0.65x).
MAX_KEPT_FRACTION = 0.25
# Under ~1M weights the op's fixed cost (~70-110 us a call in bf16) outweighs the bytes skipped: the bundled model's
# 576x576 and 576x1536 layers run 0.42-0.79x of dense at 25% kept (its stacked 3072x576 gate|up: 0.98-1.7x).
MIN_WEIGHTS = 2**20


class BlockSparseLinear(RuntimeLinear):
    """A block-pruned float layer: the kept blocks [nb, br, bc] and their (block row, block column) for the token
    counts M the op serves (decode), and the dense-with-zeros DenseLinear beside them for larger M (prefill), where
    one dense GEMM beats many block products; op block_sparse_linear.

    Holding both costs (1 + kept fraction)x the dense bytes; a decode step reads the kept fraction of them."""

    op = "block_sparse_linear"
    SPARSE_MAX_M = 1  # at M = 4, 16x16 blocks already lose to dense F.linear at 25% kept (0.56-0.62x in bf16)

    def __init__(
        self, dense: DenseLinear, blocks: torch.Tensor, block_index: torch.Tensor, kernel: KernelChoice
    ) -> None:
        super().__init__(dense.in_features, dense.out_features, backend=kernel.backend)
        self.dense = dense
        self.kernel = kernel
        self.register_buffer("blocks", blocks)
        self.register_buffer("block_index", block_index)

    @property
    def block_shape(self) -> tuple[int, int]:
        return self.blocks.shape[1], self.blocks.shape[2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // self.in_features > self.SPARSE_MAX_M:
            return self.dense(x)
        return self.kernel.impl(x, self.blocks, self.block_index, self.out_features, self.dense.bias)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        """Stacked rows of parts with one block shape: part i's block rows move down by the block rows above it.
        Refused (None) where a part above another ends in a partial block row, which the next part's first block
        row would overlap."""
        layers = [part for part in parts if isinstance(part, BlockSparseLinear)]
        if len(layers) != len(parts) or not _stackable(layers):
            return None
        br = layers[0].block_shape[0]
        if any(layer.out_features % br for layer in layers[:-1]):
            return None
        dense = DenseLinear.fuse([layer.dense for layer in layers])
        if dense is None:
            return None
        offsets = [0, *itertools.accumulate(layer.out_features // br for layer in layers[:-1])]  # in block rows
        index = torch.cat(
            [
                layer.block_index + torch.tensor([offset, 0], dtype=layer.block_index.dtype, device=layer.blocks.device)
                for layer, offset in zip(layers, offsets, strict=True)
            ]
        )
        return cls(dense, torch.cat([layer.blocks for layer in layers]), index, layers[0].kernel)  # type: ignore[arg-type]


def _stackable(layers: Sequence[BlockSparseLinear]) -> bool:
    """Parts that one op call can serve: the same backend, block shape and input width."""
    first = layers[0]
    return all(
        (layer.backend, layer.block_shape, layer.in_features) == (first.backend, first.block_shape, first.in_features)
        for layer in layers
    )


def kept_block_index(mask: torch.Tensor, block_shape: tuple[int, int]) -> tuple[torch.Tensor, int]:
    """(int64 [nb, 2] (block row, block column) of the blocks a block mask keeps, row-major: the artifact's
    weight_blocks; the number of blocks in the grid, edge blocks included)."""
    from accel.sparsity.storage import block_grid

    grid = block_grid(mask.cpu(), block_shape)  # [R, C] bool
    return grid.nonzero(), grid.numel()


def with_block_sparsity(module: nn.Linear, dense: DenseLinear, kernels: KernelSelector) -> RuntimeLinear:
    """`dense` with the block-sparse decode path beside it when `module` carries a block mask, the device runs the
    "block" format, the layer is large enough (MIN_WEIGHTS) and few enough blocks are kept (MAX_KEPT_FRACTION);
    else `dense` itself."""
    mask = getattr(module, "accel_sparse_mask", None)
    block_shape = getattr(module, "accel_sparse_block_shape", None)
    if mask is None or block_shape is None or getattr(module, "accel_sparse_pattern", None) != "block":
        return dense
    if dense.weight.numel() < MIN_WEIGHTS:
        return dense
    kernel = kernels.choose(BlockSparseLinear.op)
    if kernel is None or "block" not in kernels.capability.supported_sparse_formats:
        return dense
    block_index, grid_blocks = kept_block_index(mask, block_shape)
    if len(block_index) > MAX_KEPT_FRACTION * grid_blocks:
        return dense
    block_index = block_index.to(dense.weight.device)
    return BlockSparseLinear(dense, block_values(dense.weight, block_index, block_shape), block_index, kernel)
