"""The performance gate on synthetic results files: pass, regression, tolerance, missing metrics, baselines."""

import json

import pytest
from typer.testing import CliRunner

from accel.tools.bench import CONFIGS, BenchSettings, columns
from accel.tools.cli import app
from accel.tools.perf_gate import GateError, gate, load_baseline, results_metrics

from ..conftest import ROOT, run_sage

runner = CliRunner()
CARD = "NVIDIA H200"


def results(tmp_path, **overrides):
    rows = [
        {"config": "bf16", "tps_b1": 100.0, "tps_b1_x_bf16": 1.0, "cv_max": 0.01},
        {"config": "hf-eager", "tps_b1": 20.0, "cv_max": 0.5},
        {"config": "w4a16", "tps_b1": 260.0, "tps_b1_x_bf16": 2.6, "tps_b1_x_hf": 13.0, "cv_max": 0.02,
         "kernels": {"w4a16_linear": "cuda"}},
        {"config": "fp8+kv8", "error": "OutOfMemoryError: CUDA out of memory"},
    ]
    data = {"title": "t", "meta": {"device": CARD, "model": "llama3-8b", "prompt_len": 2048}, "columns": [],
            "rows": rows, "notes": ""}
    for config, values in overrides.items():
        next(row for row in rows if row["config"] == config).update(values)
    path = tmp_path / "decode.json"
    path.write_text(json.dumps(data))
    return path


def baseline(tmp_path, entries, requires=None):
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps({**({"_requires": requires} if requires else {}), **entries}))
    return path


def invoke(*args):
    result = runner.invoke(app, ["infer", "bench", "gate", *map(str, args)])
    return result, " ".join(result.output.split())


W4 = {"w4a16.tps_b1_x_bf16": {"min": 2.5, "why": "issue 4"}, "all.cv_max": {"max": 0.1, "why": "stable"}}


def test_pass(tmp_path):
    result, output = invoke(results(tmp_path), "--baseline", baseline(tmp_path, W4, {"device": CARD}))
    assert result.exit_code == 0, output
    assert "passed" in output


def test_regression_beyond_the_tolerance_fails(tmp_path):
    path = results(tmp_path, w4a16={"tps_b1_x_bf16": 2.3})
    result, _ = invoke(path, "--baseline", baseline(tmp_path, W4), "--json")
    assert result.exit_code == 1
    checks = {c["metric"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["w4a16.tps_b1_x_bf16"]["status"] == "fail" and checks["all.cv_max"]["status"] == "pass"
    within = results(tmp_path, w4a16={"tps_b1_x_bf16": 2.4})  # 4% under the minimum, inside 5%
    assert invoke(within, "--baseline", baseline(tmp_path, W4))[0].exit_code == 0
    assert invoke(within, "--baseline", baseline(tmp_path, W4), "--tolerance", "0")[0].exit_code == 1


def test_max_bound_and_hf_excluded_from_cv(tmp_path):
    metrics = results_metrics(json.loads(results(tmp_path, w4a16={"cv_max": 0.2}).read_text()))
    assert metrics["all.cv_max"] == 0.2  # hf-eager's 0.5 is not the runtime's
    (check,) = gate(metrics, {"all.cv_max": {"bound": "max", "limit": 0.1, "why": ""}})
    assert check.status == "fail" and "<= 0.1" in check.message


def test_missing_metric_names_it_and_the_failed_config(tmp_path):
    entries = {**W4, "fp8+kv8.tps_b64_x_bf16": {"min": 1.5, "why": "issue 4"},
               "w4a16.tps_b64_x_bf16": {"min": 1.0, "why": "batch 64"}}
    result, output = invoke(results(tmp_path), "--baseline", baseline(tmp_path, entries))
    assert result.exit_code == 1
    assert "metric 'fp8+kv8.tps_b64_x_bf16' is missing from the results: configuration 'fp8+kv8' failed: " \
           "OutOfMemoryError" in output
    assert "metric 'w4a16.tps_b64_x_bf16' is missing from the results: not measured" in output


def test_baseline_for_another_card_or_shape_fails(tmp_path):
    path = baseline(tmp_path, W4, {"device": "NVIDIA H100 80GB HBM3", "prompt_len": 2048})
    result, output = invoke(results(tmp_path), "--baseline", path)
    assert result.exit_code == 1
    assert "the baseline is for device='NVIDIA H100 80GB HBM3', the results have device='NVIDIA H200'" in output


def test_malformed_baseline_names_the_metric(tmp_path):
    with pytest.raises(GateError, match="metric 'w4a16.tps_b1_x_bf16' needs exactly one numeric 'min' or 'max'"):
        load_baseline(baseline(tmp_path, {"w4a16.tps_b1_x_bf16": {"min": "fast"}}))
    with pytest.raises(GateError, match="names no metrics"):
        load_baseline(baseline(tmp_path, {}, {"device": CARD}))
    with pytest.raises(GateError, match="--tolerance must be in"):
        gate({}, {}, tolerance=1.5)


@pytest.mark.slow
def test_entry_point_reports_bad_files_and_arguments(tmp_path):
    missing = run_sage("infer", "bench", "gate", str(tmp_path / "nope.json"), "--baseline", str(tmp_path / "b.json"))
    assert missing.returncode == 2
    assert "results file" in missing.stderr and "does not exist" in missing.stderr
    both = run_sage("infer", "bench", "gate", str(results(tmp_path)))
    assert both.returncode == 2 and "--baseline FILE" in both.stderr


def test_kernel_results_of_the_same_card_add_speedups(tmp_path):
    path = results(tmp_path)
    kernel_rows = [{"shape": "up", "M": 1, "x_bf16": 1.8, "int4mm_x_bf16": 1.7},
                   {"shape": "down", "M": 1, "x_bf16": 1.5}]
    (tmp_path / "kernels_w4a16.json").write_text(json.dumps({"meta": {"device": CARD}, "rows": kernel_rows}))
    (tmp_path / "kernels_other.json").write_text(json.dumps({"meta": {"device": "other"}, "rows": kernel_rows}))
    entries = {"kernels_w4a16.x_bf16.M1": {"min": 1.5, "why": "gemv"}}
    result, output = invoke(path, "--baseline", baseline(tmp_path, entries), "--json")
    assert result.exit_code == 0, output
    assert json.loads(result.stdout)["checks"][0]["value"] == 1.5  # the slower shape
    missing = {"kernels_other.x_bf16.M1": {"min": 1.0, "why": "another card"}}
    assert invoke(path, "--baseline", baseline(tmp_path, missing))[0].exit_code == 1


def test_written_baseline_gates_the_same_results(tmp_path):
    path = results(tmp_path)
    written = tmp_path / "card.json"
    assert invoke(path, "--write-baseline", written)[0].exit_code == 0
    data = json.loads(written.read_text())
    assert data["_requires"]["device"] == CARD
    assert data["w4a16.tps_b1_x_bf16"]["min"] == 2.6 and "bf16.tps_b1_x_bf16" not in data
    assert invoke(path, "--baseline", written)[0].exit_code == 0
    slower = results(tmp_path, w4a16={"tps_b1_x_bf16": 2.0})
    assert invoke(slower, "--baseline", written)[0].exit_code == 1


def test_shipped_baselines_name_metrics_the_bench_produces():
    produced = set(columns(BenchSettings()))
    for name in ("targets.json", "nvidia-h200.json"):
        _, bounds = load_baseline(ROOT / "bench" / "baselines" / name)
        for metric in bounds:
            config, column = metric.split(".", 1)
            if config.startswith("kernels_"):
                continue
            assert config == "all" or config in CONFIGS, metric
            assert column in produced or column in ("cv_max", "ttft_x_bf16"), metric
