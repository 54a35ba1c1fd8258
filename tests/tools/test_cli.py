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
