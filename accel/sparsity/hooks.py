"""Core's sparse formats (N:M, block, unstructured), registered through the sparse-format hook."""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import SparseFormatSpec
from accel.schema.quantization import parse_nm
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
