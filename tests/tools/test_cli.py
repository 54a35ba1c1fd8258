"""The `sage infer` commands through Typer's runner (in-process) and the real entry point."""

import json

import pytest
from typer.testing import CliRunner

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.tools.cli import build_app

from ..conftest import run_sage

runner = CliRunner()
app = build_app(load_registry(PluginPolicy()))


def invoke(*args: str):
    return runner.invoke(app, list(args))


def test_plugins_json_lists_builtins():
    result = invoke("infer", "plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"name", "distribution", "version", "hooks", "status", "error", "provides"} <= set(rows[0])
    assert any("rtn" in r["provides"].get("quant_method", []) for r in rows)


def test_check_default_profile_runs_on_the_reference_backend():
    result = invoke("infer", "check", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["compatibility"]["ok"] is True
    assert any(b["name"] == "reference" and b["available"] for b in data["backends"])


def test_check_explains_why_a_profile_cannot_run(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("preset: w4a16-2:4\nquantization:\n  method: no-such-method\n")
    result = invoke("infer", "check", "--profile", str(path), "--json")
    assert result.exit_code == 1
    reasons = json.loads(result.stdout)["compatibility"]["reasons"]
    assert any("quantization.method 'no-such-method'" in r for r in reasons)
    assert any("no sparse kernel for 2:4" in r for r in reasons)


def test_profile_show_validate_round_trip(tmp_path):
    shown = invoke("infer", "profile", "show", "w4a16-kv8")
    assert shown.exit_code == 0
    path = tmp_path / "p.yaml"
    path.write_text(shown.stdout)
    validated = invoke("infer", "profile", "validate", str(path), "--json")
    assert validated.exit_code == 0, validated.output
    assert json.loads(validated.stdout)["config"]["quantization"]["kv_bits_decode"] == 8
    as_json = invoke("infer", "profile", "show", "fp8", "--format", "json")
    assert json.loads(as_json.stdout)["quantization"]["weight_type"] == "float"


def test_profile_list():
    rows = json.loads(invoke("infer", "profile", "list", "--json").stdout)
    assert {"preset": "w4a16-2:4", "scheme": "w4a16-2:4"} in rows


@pytest.mark.slow
def test_real_entry_point_reports_invalid_profile(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("quantization:\n  group_size: 0\n")
    result = run_sage("infer", "profile", "validate", str(path))
    assert result.returncode == 2
    assert f"{path}: quantization.group_size: got 0: group_size must be -1" in result.stderr
    assert result.stdout == ""  # human output goes to stderr


@pytest.mark.slow
def test_quantize_writes_an_artifact_that_loads(tmp_path):
    from accel.quantization.qlinear import QuantLinear
    from accel.runtime.loaders import load_artifact

    out = tmp_path / "w4"
    result = run_sage("infer", "quantize", "--preset", "w4a16-rtn", "--out", str(out), "--eval-tokens", "1024",
                      "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["scheme"] == "w4a16" and report["artifact"] == str(out)
    assert report["quantized_bytes"] < 0.5 * report["fp16_bytes"]
    before, after = report["perplexity_before"]["perplexity"], report["perplexity_after"]["perplexity"]
    assert after > before  # 4-bit RTN costs perplexity; the bench reports how much
    assert report["layers"]["model.layers.0.mlp.down_proj"]["num_bits"] == 4
    model, _, manifest = load_artifact(out)
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 210
    assert manifest["accel_config"]["quantization"]["method"] == "rtn"
    assert "reference" in manifest["kernel_meta"]


@pytest.mark.slow
def test_quantize_refuses_an_unknown_method_and_awq_export_of_partial_groups(tmp_path):
    unknown = run_sage("infer", "quantize", "--method", "nope", "--out", str(tmp_path / "x"))
    assert unknown.returncode == 2 and "quantization.method 'nope'" in unknown.stderr
    profile = tmp_path / "asym.yaml"
    profile.write_text("preset: w4a16-rtn\nquantization:\n  symmetric: false\n")
    symmetric = run_sage("infer", "quantize", "--preset", "w4a16-rtn", "--format", "autoawq",
                         "--out", str(tmp_path / "awq"))
    assert symmetric.returncode == 2 and "re-quantize with symmetric=False" in symmetric.stderr
    awq = run_sage("infer", "quantize", "--profile", str(profile), "--format", "autoawq",
                   "--out", str(tmp_path / "awq"))
    assert awq.returncode == 2 and "group_size 64 or 32" in awq.stderr
    assert not (tmp_path / "awq").exists()


@pytest.mark.slow
def test_run_speculative_prints_text_and_metrics():
    result = run_sage("infer", "run-speculative", "--draft", "ngram", "--max-new-tokens", "16", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(result.stdout)
    assert data["text"].strip()
    metrics = data["metrics"]
    assert 0 < metrics["num_generated_tokens"] <= 16
    assert 0.0 <= metrics["acceptance_rate"] <= 1.0 and metrics["mean_accepted_length"] >= 1.0


@pytest.mark.slow
def test_run_speculative_on_the_runtime_matches_transformers_and_runs_medusa(tmp_path):
    """--runtime decodes on the accel runtime: the same greedy text as the transformers path, for n-gram lookup and
    for Medusa heads (random ones here: the output is the target's whatever they draft)."""
    import torch

    from accel.speculative.medusa import MedusaHeads, save_heads

    args = ("infer", "run-speculative", "--max-new-tokens", "16", "--json")
    plain = json.loads(run_sage(*args, "--draft", "ngram").stdout)
    heads = MedusaHeads(576, 2)
    with torch.no_grad():
        heads.weight.normal_(0, 0.02, generator=torch.Generator().manual_seed(0))
    save_heads(heads, tmp_path / "heads", {})
    for extra in (("--draft", "ngram"), ("--draft", "medusa", "--draft-model", str(tmp_path / "heads"))):
        result = run_sage(*args, "--runtime", *extra)
        assert result.returncode == 0, result.stderr[-2000:]
        data = json.loads(result.stdout)
        assert data["runtime"] is True and data["text"] == plain["text"], extra
    refused = run_sage(*args, "--draft", "medusa")
    assert refused.returncode == 2 and "add --runtime" in " ".join(refused.stderr.split())
