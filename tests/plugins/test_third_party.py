"""The README's worked example, installed as a real distribution and run through its own tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ..conftest import ROOT, run_sage

EXAMPLE = ROOT / "examples" / "accel-pow2"


@pytest.mark.slow
def test_example_plugin_is_discovered_with_its_method_and_command(install_dist):
    path = install_dist(EXAMPLE)
    listed = run_sage("infer", "plugins", "--json", paths=[path], env={"ACCEL_STRICT_PLUGINS": "1"})
    assert listed.returncode == 0, listed.stderr
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "pow2")
    assert row["distribution"] == "accel-pow2" and row["version"] == "0.1.0"
    assert row["provides"] == {"quant_method": ["pow2"]}
    assert sorted(row["hooks"]) == ["accel_register_commands", "accel_register_quant_methods"]

    info = run_sage("infer", "pow2-info", paths=[path])
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["properties"]["rounding"]["enum"] == ["up", "nearest"]


@pytest.mark.slow
def test_example_plugin_passes_its_own_tests_with_the_conformance_kit(install_dist):
    path = install_dist(EXAMPLE)
    env = {**os.environ, "PYTHONPATH": str(path)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")],
        capture_output=True, text=True, env=env, cwd=EXAMPLE, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "failed" not in result.stdout
