"""`sage infer gate`: the readable diff of measured against allowed, per-metric tolerances, results files whose rows
have no `config`, the `bench gate` alias, and the CPU baselines CI gates fresh results against."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from accel.tools.bench import BenchSettings, columns
from accel.tools.cli import app
from accel.tools.perf_gate import GateError, load_baseline, report, run_gate

from ..conftest import ROOT, run_sage

runner = CliRunner()
CPU_DECODE = ROOT / "bench" / "baselines" / "cpu-bundled-decode.json"
CPU_QUALITY = ROOT / "bench" / "baselines" / "cpu-bundled-quality.json"


def write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def decode_results(tmp_path: Path, w4_ratio: float = 2.6) -> Path:
    rows = [{"config": "bf16", "tps_b1": 100.0, "tps_b1_x_bf16": 1.0},
            {"config": "w4a16", "tps_b1": 100 * w4_ratio, "tps_b1_x_bf16": w4_ratio, "weights_gb": 5.7}]
    return write(tmp_path / "decode.json", {"title": "t", "meta": {"device": "cpu"}, "columns": [], "rows": rows})


BASELINE = {"w4a16.tps_b1_x_bf16": {"min": 2.5, "why": "issue 4: W4A16 >= 2.5x bf16"},
            "w4a16.weights_gb": {"max": 5.7, "tolerance": 0.0, "why": "packed int4 size"}}


def gate(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, ["infer", "gate", *map(str, args)])
    return result.exit_code, result.stdout, result.stderr


def test_pass_prints_the_table_and_passed(tmp_path):
    code, _, err = gate(decode_results(tmp_path), "--baseline", write(tmp_path / "b.json", BASELINE))
    assert code == 0, err
    lines = err.splitlines()
    header = next(line for line in lines if line.startswith("metric"))
    assert header.split() == ["metric", "bound", "allowed", "measured", "change", "status"]
    row = next(line for line in lines if line.startswith("w4a16.tps_b1_x_bf16"))
    assert row.split() == ["w4a16.tps_b1_x_bf16", ">=", "2.5", ">=", "2.375", "2.6", "+4.0%", "ok"]
    assert lines[-1] == "passed"


def test_a_regression_fails_with_a_readable_diff(tmp_path):
    code, out, err = gate(decode_results(tmp_path, 2.3), "--baseline", write(tmp_path / "b.json", BASELINE))
    assert code == 1
    row = next(line for line in err.splitlines() if line.startswith("w4a16.tps_b1_x_bf16"))
    assert row.split()[-2:] == ["-8.0%", "FAIL"]
    assert ("- w4a16.tps_b1_x_bf16: 2.3 is 8.0% below its minimum 2.5 (tolerance 5%, allowed 2.375); gated because: "
            "issue 4: W4A16 >= 2.5x bf16") in err
    assert err.splitlines()[-1] == "failed: 1 of 2 metrics regressed or are missing"
    code, out, _ = gate(decode_results(tmp_path, 2.3), "--baseline", tmp_path / "b.json", "--json")
    checks = {check["metric"]: check for check in json.loads(out)["checks"]}
    assert checks["w4a16.tps_b1_x_bf16"]["change"] == pytest.approx(-0.08)
    assert checks["w4a16.weights_gb"]["status"] == "pass"


def test_a_metrics_own_tolerance_replaces_the_commands(tmp_path):
    loose = {"w4a16.tps_b1_x_bf16": {"min": 2.5, "tolerance": 0.5, "why": "CPU timing, noisy"}}
    baseline = write(tmp_path / "loose.json", loose)
    assert gate(decode_results(tmp_path, 1.3), "--baseline", baseline)[0] == 0  # 48% down, inside 50%
    assert gate(decode_results(tmp_path, 1.2), "--baseline", baseline)[0] == 1
    tight = write(tmp_path / "tight.json", {**BASELINE, "w4a16.weights_gb": {"max": 5.6, "tolerance": 0.0}})
    code, _, err = gate(decode_results(tmp_path), "--baseline", tight, "--tolerance", "0.5")
    assert code == 1 and "5.7 is 1.8% above its maximum 5.6 (tolerance 0%, allowed 5.6)" in err
    with pytest.raises(GateError, match="metric 'w4a16.tps_b1_x_bf16' has tolerance 2; use a fraction in"):
        load_baseline(write(tmp_path / "bad.json", {"w4a16.tps_b1_x_bf16": {"min": 1, "tolerance": 2}}))


def test_rows_without_a_config_are_named_by_their_fields(tmp_path):
    rows = [{"prompt": "chat", "strategy": "plain", "tokens_per_s": 10.0},
            {"prompt": "chat", "strategy": "ngram", "acceptance_rate": 0.4, "tokens_per_s": 12.0},
            {"prompt": "code", "strategy": "ngram", "error": "RuntimeError: boom"}]
    results = write(tmp_path / "spec.json", {"meta": {}, "rows": rows})
    baseline = write(tmp_path / "b.json", {"chat / ngram.acceptance_rate": {"min": 0.5, "why": "n-gram hits"},
                                           "code / ngram.acceptance_rate": {"min": 0.1, "why": "n-gram hits"}})
    outcome = run_gate(results, baseline)
    verdicts = {check.metric: check for check in outcome.checks}
    assert verdicts["chat / ngram.acceptance_rate"].status == "fail"
    assert "configuration 'code / ngram' failed: RuntimeError: boom" in verdicts["code / ngram.acceptance_rate"].message
    text = report(outcome.checks, outcome.mismatches)
    assert "chat / ngram.acceptance_rate: 0.4 is 20.0% below its minimum 0.5" in text


def test_bench_gate_is_the_same_command(tmp_path):
    baseline = write(tmp_path / "b.json", BASELINE)
    alias = runner.invoke(app, ["infer", "bench", "gate", str(decode_results(tmp_path, 2.3)), "--baseline",
                                str(baseline)])
    assert alias.exit_code == 1 and alias.stderr == gate(tmp_path / "decode.json", "--baseline", baseline)[2]


@pytest.mark.slow
def test_the_real_entry_point_gates_committed_results(tmp_path):
    """The installed `sage` on a committed results file and its shipped targets: exit 1, table and reasons."""
    shutil.copy(ROOT / "bench" / "results" / "decode.json", tmp_path / "decode.json")
    done = run_sage("infer", "gate", str(tmp_path / "decode.json"), "--baseline",
                    str(ROOT / "bench" / "baselines" / "targets.json"), "--tolerance", "0")
    assert done.returncode == 1
    assert "w4a16.tps_b1_x_bf16" in done.stderr and "FAIL" in done.stderr and "gated because" in done.stderr
    missing = run_sage("infer", "gate", str(tmp_path / "nope.json"), "--baseline", str(CPU_DECODE))
    assert missing.returncode == 2 and "results file" in missing.stderr and "does not exist" in missing.stderr


def test_cpu_baselines_gate_what_ci_measures():
    """The baselines .ci/run gates fresh CPU results against: their metrics are columns the benchmarks write, and
    their requirements pin the settings .ci/run uses (a baseline for other settings would be meaningless)."""
    ci = (ROOT / ".ci" / "run").read_text()
    requires, bounds = load_baseline(CPU_DECODE)
    produced = set(columns(BenchSettings(model="bundled", batches=(1,))))
    for metric in bounds:
        config, column = metric.rsplit(".", 1)
        assert config in ("bf16", "w4a16") and column in produced, metric
    assert requires["model"] == "bundled" and requires["torch_device"] == "cpu"
    for flag, key in (("--prompt-len", "prompt_len"), ("--decode-prompt-len", "decode_prompt_len"),
                      ("--new-tokens", "new_tokens"), ("--dtype", "dtype")):
        assert f"{flag} {requires[key]}" in ci, flag
    requires, bounds = load_baseline(CPU_QUALITY)
    assert f"--max-tokens {requires['max_tokens']}" in ci
    for metric in bounds:
        config, column = metric.rsplit(".", 1)
        assert config in ci and column in ("delta_pct", "top1_agreement", "size_mb"), metric
