"""The tuned launch tables' loader (Triton-free): a missing table is empty, a written one reads back."""

from __future__ import annotations

import json

from accel_cuda.kernels.tuning import tuned_table


def test_missing_table_is_empty(tmp_path):
    assert tuned_table(tmp_path / "none.json") == {}


def test_written_table_reads_back(tmp_path):
    path = tmp_path / "t.json"
    table = {"NVIDIA H200": {"14336x4096g128": {"1": {"block_n": 16, "ng": 8}}}}
    path.write_text(json.dumps(table))
    assert tuned_table(path) == table


def test_every_shipped_table_names_cards_shapes_and_m():
    from pathlib import Path

    import accel_cuda.kernels as kernels

    tables = sorted(Path(kernels.__file__).parent.glob("*_configs.json"))
    assert len(tables) >= 5
    for path in tables:
        for card, shapes in tuned_table(path).items():
            assert card and shapes, path.name
            for shape, by_m in shapes.items():
                # "NxKgG", "wB:NxK" (wxa16_tma_dot: bit width, shape; group 128 or per channel alike) or
                # "int8:NxK" / "fp8:NxK" (w8a8_tma: the 8-bit format, per-channel weights)
                bits, _, dims = shape.rpartition(":")
                n, rest = dims.split("x")
                k, _, group = rest.partition("g")
                assert bits in ("", "w4", "w8", "int8", "fp8") and (group or bits), (path.name, shape)
                assert int(n) > 0 and int(k) > 0 and (not group or int(group) > 0), (path.name, shape)
                assert all(m.isdigit() and isinstance(cfg, dict) and cfg for m, cfg in by_m.items()), (path.name, shape)
