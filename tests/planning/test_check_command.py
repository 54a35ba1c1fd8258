"""`sage infer check --backend B --profile P [--chip F]`: the plan, layer by layer, for a device that is absent."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.tools.cli import build_app

runner = CliRunner()
app = build_app(load_registry(PluginPolicy()))


def check(*args: str):
    result = runner.invoke(app, ["infer", "check", *args, "--json"])
    return result, (json.loads(result.stdout) if result.stdout.strip().startswith("{") else None)


def test_absent_backend_is_planned_for_each_of_its_chip_families():
    result, data = check("--backend", "ascend", "--profile", "fp8-kv8")  # --profile takes a preset name
    assert data is not None, result.output
    chips = [plan["chip"] for plan in data["plans"]]
    assert set(chips) == {"ascend-910b", "ascend-910c", "ascend-310p"}
    b910 = next(plan for plan in data["plans"] if plan["chip"] == "ascend-910b")
    assert b910["layers"]["attention.qkv_proj"]["planned"] == "w8a8-int8"
    assert b910["layers"]["attention.qkv_proj"]["backend"] == "ascend"
    assert b910["layers"]["attention.kv_cache"]["planned"] == "kv-int8"
    assert any("re-quantize" in warning for warning in b910["warnings"])
    assert result.exit_code == 0  # fallbacks warn; nothing refused


def test_chip_option_plans_one_family_and_a_refusal_fails():
    result, data = check("--chip", "ascend-310p", "--profile", "w4a16")
    assert [plan["chip"] for plan in data["plans"]] == ["ascend-310p"]
    assert data["plans"][0]["refused"] and result.exit_code == 1


def test_fp8_kv_on_a_chip_without_fp8_becomes_int8(tmp_path):
    path = tmp_path / "kvfp8.yaml"
    path.write_text("quantization:\n  kv_bits_prefill: 8\n  kv_bits_decode: 8\n  kv_type: float\n")
    result, data = check("--chip", "mlu370", "--profile", str(path))
    kv = data["plans"][0]["layers"]["attention.kv_cache"]
    assert (kv["requested"], kv["planned"], kv["status"]) == ("kv-fp8", "kv-int8", "fallback")
    assert result.exit_code == 0


def test_chip_of_another_backend_is_an_error():
    result = runner.invoke(app, ["infer", "check", "--chip", "mlu370", "--backend", "ascend"])
    assert result.exit_code != 0 and "belongs to backend 'mlu'" in str(result.exception)


def test_present_device_keeps_the_old_report():
    result, data = check()
    assert data["compatibility"]["ok"] is True and data["plans"][0]["backend"] == "reference"
    assert data["plans"][0]["chip"] is None and result.exit_code == 0
