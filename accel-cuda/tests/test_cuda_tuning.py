"""The tuned launch tables' loader (Triton-free): a missing table is empty, a written one reads back, a card without
rows for a shape borrows a sibling's."""

from __future__ import annotations

import json

from accel_cuda.kernels.tuning import SIBLINGS, card_rows, tuned_table


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


H200_ROWS = {"1": {"block_n": 16}}
H100_ROWS = {"1": {"block_n": 32}}


def test_a_card_reads_its_own_rows_first():
    table = {"NVIDIA H200": {"s": H200_ROWS}, "NVIDIA H100 80GB HBM3": {"s": H100_ROWS}}
    assert card_rows(table, "NVIDIA H100 80GB HBM3", "s") == H100_ROWS
    assert card_rows(table, "NVIDIA H200", "s") == H200_ROWS


def test_a_sibling_without_rows_for_a_shape_borrows_them_per_shape():
    table = {"NVIDIA H200": {"s": H200_ROWS, "t": H200_ROWS}, "NVIDIA H100 80GB HBM3": {"t": H100_ROWS}}
    assert card_rows(table, "NVIDIA H100 80GB HBM3", "s") == H200_ROWS  # none of its own for s
    assert card_rows(table, "NVIDIA H100 80GB HBM3", "t") == H100_ROWS
    assert card_rows(table, "NVIDIA H800", "s") == H200_ROWS
    assert card_rows(table, "NVIDIA H100 80GB HBM3", "u") is None


def test_cards_outside_a_family_never_borrow():
    table = {"NVIDIA H200": {"s": H200_ROWS}}
    for card in ("NVIDIA H100 PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA H20", ""):  # other SM counts or shared memory
        assert card_rows(table, card, "s") is None


def test_families_are_disjoint_and_hopper_132_sm_parts():
    from accel.planning.chips import NVIDIA_CHIPS

    names = [card for family in SIBLINGS for card in family]
    assert len(names) == len(set(names))
    known = {chip.capability.device_name: chip.capability.compute_capability for chip in NVIDIA_CHIPS}
    assert {"NVIDIA H200", "NVIDIA H100 80GB HBM3"} <= set(names)
    assert all(known.get(card, "9.0") == "9.0" for card in names)


def test_launch_note_says_tuned_borrowed_or_untuned(tmp_path):
    from accel_cuda.kernels.tuning import launch_note

    (tmp_path / "w8a8_tma_configs.json").write_text(json.dumps({"NVIDIA H200": {"fp8:1x1": H200_ROWS}}))
    assert launch_note("fp8_linear", "NVIDIA H200", tmp_path) == ""  # tuned on this card
    assert launch_note("rms_norm", "NVIDIA H100 PCIe", tmp_path) == ""  # an op without launch tables
    borrowed = launch_note("fp8_linear", "NVIDIA H100 80GB HBM3", tmp_path)
    assert borrowed.startswith("launches tuned on the NVIDIA H200, borrowed")
    untuned = launch_note("fp8_linear", "NVIDIA H100 PCIe", tmp_path)
    assert "no launch tuned for the NVIDIA H100 PCIe" in untuned and "--write-table" in untuned
    assert "folds" not in untuned and "folds" in launch_note("w4a16_linear", "NVIDIA H100 PCIe", tmp_path)


def test_the_shipped_tables_cover_both_cards_every_op():
    from accel_cuda.kernels.tuning import OP_TABLES, launch_note

    for op in OP_TABLES:
        assert launch_note(op, "NVIDIA H200") == launch_note(op, "NVIDIA H100 80GB HBM3") == "", op
        assert "borrowed" in launch_note(op, "NVIDIA H800"), op


def test_a_broken_table_names_the_file_and_the_fix(tmp_path):
    import pytest

    for name, text in (("bad.json", "{not json"), ("list.json", "[1, 2]"), ("rows.json", '{"NVIDIA H200": 3}')):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ValueError, match=f"tuned launch table {path}.*--write-table"):
            tuned_table(path)
