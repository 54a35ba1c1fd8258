"""Core's sparse formats (N:M, block, unstructured) and magnitude pruning, registered through the same hooks a
plugin uses (Wanda and SparseGPT come from the accel-sparsegpt distribution)."""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import EmptyConfig, PruningMethodSpec, SparseFormatSpec
from accel.schema.quantization import parse_nm
from accel.sparsity.magnitude import Magnitude
from accel.sparsity.structured import check_block, check_nm, select_block, select_nm
from accel.sparsity.unstructured import check_unstructured, select_unstructured


@hookimpl
def accel_register_sparse_formats() -> list[SparseFormatSpec]:
    return [
        SparseFormatSpec(
            name="nm",
            description="N:M along the input dimension (2:4, 4:8, any N < M)",
            handles=lambda pattern: parse_nm(pattern) is not None,
            select=select_nm,
            violations=check_nm,
        ),
        SparseFormatSpec(
            name="block",
            description="whole blocks of block_shape kept or dropped",
            handles=lambda pattern: pattern == "block",
            select=select_block,
            violations=check_block,
        ),
        SparseFormatSpec(
            name="unstructured",
            description="any weight may be dropped; ratio per output row",
            handles=lambda pattern: pattern == "unstructured",
            select=select_unstructured,
            violations=check_unstructured,
        ),
    ]


@hookimpl
def accel_register_pruning_methods() -> list[PruningMethodSpec]:
    return [
        PruningMethodSpec(
            name="magnitude",
            description="magnitude pruning: drop the smallest |W| as the format allows (baseline, no calibration)",
            factory=lambda _config: Magnitude(),
            config_model=EmptyConfig,
        )
    ]
