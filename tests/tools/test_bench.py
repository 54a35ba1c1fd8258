"""`sage infer bench`: the decode benchmark on the bundled model on the CPU (no timing thresholds) and its
argument checks."""

import json

import pytest
import torch
from typer.testing import CliRunner

from accel.runtime.cpu import cpu_capability
from accel.tools.bench import BASELINE, CONFIGS, HF_EAGER, BenchSettings, add_ratios, run_bench
from accel.tools.cli import app

from ..conftest import run_sage

runner = CliRunner()
TINY = ["--model", "bundled", "--device", "cpu", "--batch", "1", "--new-tokens", "4", "--repeats", "1",
        "--prompt-len", "16"]


@pytest.mark.slow
def test_bundled_cpu_run_writes_results_naming_the_device(tmp_path):
    out = tmp_path / "decode.json"
    result = run_sage("infer", "bench", *TINY, "--configs", "bf16,w4a16", "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert json.loads(out.read_text()) == data
    assert out.with_suffix(".md").read_text().startswith(f"# {data['title']}")
    device = cpu_capability().device_name
    assert data["meta"]["device"] == device and device in data["title"]
    assert data["meta"]["torch_device"] == "cpu" and data["meta"]["model"] == "bundled"
    assert {"config", "ttft_ms", "tpot_ms", "tps_b1", "tps_b1_x_bf16", "agreement", "error"} <= set(data["columns"])
    rows = {row["config"]: row for row in data["rows"]}
    assert list(rows) == ["bf16", "w4a16"]
    for row in rows.values():
        assert "error" not in row, row.get("error")
        assert row["ttft_ms"] > 0 and row["tps_b1"] > 0 and row["weights_gb"] > 0
        assert row["prefill_peak_gb"] is None and row["decode_peak_gb"] is None  # not tracked on the CPU
        assert len(row["tokens"]) == 4 and 0 <= row["agreement"] <= 1
    assert rows["bf16"]["agreement"] == 1 and rows["bf16"]["tps_b1_x_bf16"] == 1
    assert rows["w4a16"]["kernels"]["w4a16_linear"] == "reference"
    assert rows["w4a16"]["weights_gb"] < rows["bf16"]["weights_gb"]
    standard = data["metrics"]["configs"]  # accel.integration.metrics' block, named as in every results file
    assert standard["w4a16"]["throughput_tok_s"] == rows["w4a16"]["tps_b1"]
    assert standard["w4a16"]["weights_gb"] == rows["w4a16"]["weights_gb"] and standard["bf16"]["speedup"] == 1


@pytest.mark.slow
def test_hf_eager_row_and_ratios_against_it():
    settings = BenchSettings(model="bundled", device="cpu", configs=(BASELINE, HF_EAGER, "kv4"), batches=(1,),
                             prompt_len=16, new_tokens=4, repeats=2)
    data = run_bench(settings)
    rows = {row["config"]: row for row in data["rows"]}
    assert all("error" not in row for row in rows.values()), rows
    hf = rows[HF_EAGER]
    assert hf["tps_b1"] > 0 and hf["tps_b1_x_hf"] == 1 and len(hf["tokens"]) == 4
    assert rows[BASELINE]["tps_b1_x_hf"] == pytest.approx(rows[BASELINE]["tps_b1"] / hf["tps_b1"])
    assert rows["kv4"]["kernels"]["cached_attention"] == "reference"
    assert hf["cv_b1"] is not None  # two repeats


def test_quantized_lm_head_config_on_the_bundled_model():
    settings = BenchSettings(model="bundled", device="cpu", configs=("w4a16", "w4a16-head"), batches=(1,),
                             prompt_len=16, new_tokens=4, repeats=1)
    rows = {row["config"]: row for row in run_bench(settings)["rows"]}
    assert all("error" not in row for row in rows.values()), rows
    # SmolLM2 ties lm_head to the embedding: the int4 head is an extra tensor beside the 16-bit embedding (49152 x
    # 576 codes at 4 bits + one scale per 128), so the weights grow by about that much
    extra = (rows["w4a16-head"]["weights_gb"] - rows["w4a16"]["weights_gb"]) * 1e9
    assert extra == pytest.approx(49152 * 576 / 2 + 49152 * 576 / 128 * 4, rel=0.1)
    assert len(rows["w4a16-head"]["tokens"]) == 4


def test_ratios_and_failed_configs():
    settings = BenchSettings(batches=(1, 64))
    rows = [
        {"config": "bf16", "tps_b1": 100.0, "tps_b64": 1000.0, "ttft_ms": 50.0, "prefill_peak_gb": 20.0,
         "decode_peak_gb": 18.0, "cv_b1": 0.01, "cv_b64": 0.02},
        {"config": "hf-eager", "tps_b1": 20.0, "cv_b1": 0.3},
        {"config": "fp8", "tps_b1": 150.0, "tps_b64": 1600.0, "ttft_ms": 40.0, "prefill_peak_gb": 12.0,
         "decode_peak_gb": 9.0, "cv_b1": 0.03, "cv_b64": None},
        {"config": "kv4", "error": "OutOfMemoryError: CUDA out of memory"},
    ]
    add_ratios(rows, settings)
    fp8 = rows[2]
    assert fp8["tps_b1_x_bf16"] == 1.5 and fp8["tps_b64_x_bf16"] == 1.6 and fp8["tps_b1_x_hf"] == 7.5
    assert fp8["ttft_saving"] == pytest.approx(0.2) and fp8["ttft_x_bf16"] == 1.25
    assert fp8["prefill_mem_saving"] == pytest.approx(0.4) and fp8["decode_mem_saving"] == pytest.approx(0.5)
    assert fp8["cv_max"] == 0.03 and rows[0]["cv_max"] == 0.02
    assert "agreement" not in fp8  # random weights: only the bundled model reports agreement
    assert set(rows[3]) == {"config", "error"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--configs", "bf16,nope"], "--configs: unknown ['nope']"),
        (["--new-tokens", "1"], "--new-tokens: must be at least 2"),
        (["--batch", "1,x"], "--batch: expected comma-separated integers"),
        (["--batch", "0"], "--batch: must be at least 1"),
        (["--repeats", "0"], "--repeats: must be at least 1"),
        (["--dtype", "int8"], "--dtype: got 'int8'"),
        (["--model", "llama2"], "--model: got 'llama2'"),
        (["--layers", "2"], "--layers: a positive layer count for --model llama3-8b only"),
    ],
)
def test_bad_arguments_name_the_option(args, message):
    result = runner.invoke(app, ["infer", "bench", "--model", "bundled", "--device", "cpu", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_says_what_to_do():
    result = runner.invoke(app, ["infer", "bench", "--device", "cuda"])
    assert result.exit_code == 2
    assert "--device cpu --model bundled" in " ".join(result.output.split())


def test_every_config_maps_to_a_runtime_format():
    from accel.runtime.kv_ops import KV_FORMATS
    from accel.runtime.model import RANDOM_QUANT
    from accel.tools.bench import BUNDLED_PROFILES

    for config in CONFIGS.values():
        assert config.quant in RANDOM_QUANT and config.kv_format in KV_FORMATS
        # w4a16-2:4 needs pruning, not only an RTN recipe: random weights only
        assert config.quant in ("none", "w4a16-2:4") or config.quant in BUNDLED_PROFILES
