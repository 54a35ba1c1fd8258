"""The prune job and `sage infer prune`: per-kind sparsity, sizes, kernel meta, and the command end to end."""

import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.sparsity.structured import nm_mask
from accel.tools.cli import build_app
from accel.tools.prune import compact_bytes, sparse_kernel_meta, sparse_layer_format, sparsity_by_kind
from accel.tools.quantize import model_bytes


def test_sparsity_by_kind():
    masks = {
        "model.layers.0.mlp.up_proj": torch.tensor([[True, False, False, False]]),
        "model.layers.1.mlp.up_proj": torch.tensor([[True, True, False, False]]),
        "model.layers.0.self_attn.q_proj": torch.tensor([[True, True]]),
    }
    assert sparsity_by_kind(masks) == {"up_proj": 0.625, "q_proj": 0.0, "all": 0.5}


def test_compact_bytes_counts_kept_values_and_metadata():
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    mask = nm_mask(torch.rand(32, 64), 2, 4)
    dense = model_bytes(model)
    kept = 32 * 32
    assert compact_bytes(model, {"0": mask}, "2:4", (16, 16)) == dense - 32 * 64 * 2 + kept * 2 + kept * 2 // 8
    bitmask = compact_bytes(model, {"0": mask}, "unstructured", (16, 16))
    assert bitmask == dense - 32 * 64 * 2 + kept * 2 + 32 * 64 // 8


def test_kernel_meta_says_which_layers_run_sparse_where():
    registry = load_registry(PluginPolicy())
    meta = sparse_kernel_meta(registry, "2:4", "w4a16")
    assert meta["reference"]["sparse"] == {"pattern": "2:4", "layers": "w4a16", "runs": "dense-with-zeros"}
    # the CPU's portable block_sparse_linear skips zero blocks of float layers, within the runtime's limits
    block = sparse_kernel_meta(registry, "block", "float")["reference"]["sparse"]
    assert block["runs"] == "sparse" and "25%" in block["where"]
    assert sparse_kernel_meta(registry, "block", "w4a16")["reference"]["sparse"]["runs"] == "dense-with-zeros"


def test_sparse_layer_format_reads_the_quantize_records():
    w4 = {"method": "rtn", "type": "int", "num_bits": 4, "symmetric": True, "activations": None}
    assert sparse_layer_format(None) == "float"
    assert sparse_layer_format({"a": w4, "b": {**w4, "symmetric": False}}) == "w4a16"
    assert sparse_layer_format({"a": w4, "b": {**w4, "num_bits": 8, "activations": "int8"}}) == "mixed"


@pytest.mark.slow
def test_prune_then_quantize_writes_an_artifact_that_loads(tmp_path):
    from accel.quantization.qlinear import QuantLinear
    from accel.runtime.loaders import load_artifact
    from accel.sparsity.storage import read_sparse_layers

    app = build_app(load_registry(PluginPolicy()))
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["infer", "prune", "--method", "magnitude", "--pattern", "4:8",
                                      "--then-quantize", "w4a16-rtn", "--eval-tokens", "512", "--out", str(out),
                                      "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["sparsity_by_kind"]["all"] == pytest.approx(0.5)
    assert set(report["sparsity_by_kind"]) >= {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "down_proj"}
    before, pruned, after = (report[k]["perplexity"] for k in ("perplexity_before", "perplexity_pruned",
                                                               "perplexity_after"))
    assert before < pruned and after > 1
    assert report["compact_bytes"] < report["model_bytes"] < report["fp16_bytes"]
    model, _, manifest = load_artifact(out)
    masks = read_sparse_layers(out, manifest, model)
    assert len(masks) == 30 * 7
    down = model.get_submodule("model.layers.3.mlp.down_proj")
    assert isinstance(down, QuantLinear)
    assert (down.dequantized_weight(torch.float32)[~masks["model.layers.3.mlp.down_proj"]] == 0).all()
    assert manifest["kernel_meta"]["reference"]["sparse"]["runs"] == "dense-with-zeros"


def test_prune_refuses_a_ratio_that_contradicts_the_pattern():
    app = build_app(load_registry(PluginPolicy()))
    result = CliRunner().invoke(app, ["infer", "prune", "--pattern", "2:4", "--ratio", "0.3"])
    assert result.exit_code == 2
    assert "implies ratio 0.5" in result.output


@pytest.mark.slow
def test_quantize_with_a_sparse_profile_prunes_first_and_keeps_the_mask(tmp_path):
    """`sage infer quantize` with a 2:4 profile prunes, then quantizes keeping the mask (the w4a16-2:4 preset's path,
    here with magnitude and RTN so that it needs no calibration)."""
    from accel.runtime.loaders import load_artifact
    from accel.sparsity.storage import read_sparse_layers

    profile = tmp_path / "p.yaml"
    profile.write_text("quantization:\n  weight_bits: 4\n  group_size: 128\n  method: rtn\n  sparsity_pattern: '2:4'\n"
                       "  sparsity_ratio: 0.5\nsparsity:\n  pattern: '2:4'\n  method: magnitude\n")
    app = build_app(load_registry(PluginPolicy()))
    out = tmp_path / "q"
    result = CliRunner().invoke(app, ["infer", "quantize", "--profile", str(profile), "--eval-tokens", "512",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pattern"] == "2:4" and report["sparsity_by_kind"]["all"] == pytest.approx(0.5)
    model, _, manifest = load_artifact(out)
    assert manifest["sparsity"]["pattern"] == "2:4" and len(read_sparse_layers(out, manifest, model)) == 30 * 7
    assert manifest["layers"]["model.layers.0.mlp.down_proj"]["weights"]["num_bits"] == 4
