"""Serving metrics: the standard metrics block of results files (cost per million tokens included), and the
Prometheus exporter fed by a real Generator and a real speculative run, scraped over HTTP on localhost."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.integration.metrics import (
    PRICE_ENV,
    MetricsError,
    ServingMetrics,
    cost_per_million_tokens,
    metrics_block,
    metrics_markdown,
    price_from_env,
    sum_samples,
)
from accel.plugins import get_registry
from accel.runtime.generate import Generator
from accel.runtime.model import random_model
from accel.schema import SpeculativeConfig
from accel.speculative.decode import speculative_generate
from accel.speculative.verifier import SamplingParams
from accel.tools.speculative import build_drafter

ROOT = Path(__file__).resolve().parents[2]
TINY = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=128)


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def test_cost_per_million_tokens_and_the_price():
    # 2 $/GPU-hour at 1000 tok/s: a million tokens take 1000 s = 1/3.6 h -> $0.5556; two cards cost twice that.
    assert cost_per_million_tokens(1000.0, 2.0) == pytest.approx(2.0 / 3.6)
    assert cost_per_million_tokens(1000.0, 2.0, gpus=2) == pytest.approx(4.0 / 3.6)
    with pytest.raises(MetricsError, match="tokens_per_s must be > 0"):
        cost_per_million_tokens(0.0, 2.0)
    assert price_from_env(3.0) == 3.0


def test_price_from_the_environment(monkeypatch):
    monkeypatch.setenv(PRICE_ENV, "2.5")
    assert price_from_env() == 2.5
    monkeypatch.setenv(PRICE_ENV, "cheap")
    with pytest.raises(MetricsError, match=f"{PRICE_ENV}='cheap' is not a number"):
        price_from_env()
    monkeypatch.delenv(PRICE_ENV)
    assert price_from_env() is None


def test_block_compares_each_row_with_its_groups_baseline():
    rows = [
        {"config": "bf16", "tps_b1": 100.0, "tps_b64": 4000.0, "ttft_ms": 50.0, "tpot_ms": 10.0,
         "decode_peak_gb": 16.0, "prefill_peak_gb": 17.0, "weights_gb": 16.0},
        {"config": "hf-eager", "tps_b1": 20.0},
        {"config": "w4a16", "tps_b1": 250.0, "tps_b64": 3000.0, "weights_gb": 5.7, "agreement": 0.9},
        {"config": "fp8+kv8", "error": "OutOfMemoryError"},
    ]
    block = metrics_block(rows, price_per_gpu_hour=3.6)
    configs = block["configs"]
    assert list(configs) == ["bf16", "hf-eager", "w4a16"] and block["baselines"]["w4a16"] == "bf16"
    assert configs["bf16"]["throughput_tok_s"] == 4000.0 and configs["bf16"]["throughput_batch"] == 64
    assert configs["bf16"]["peak_memory_gb"] == 17.0 and configs["bf16"]["speedup"] == 1.0
    assert configs["bf16"]["cost_per_mtok_usd"] == pytest.approx(3.6 / (4000 * 3600) * 1e6)
    assert configs["hf-eager"]["speedup"] == pytest.approx(0.2)  # its batch 1 against bf16's batch 1
    assert configs["w4a16"]["speedup"] == pytest.approx(0.75) and configs["w4a16"]["agreement"] == 0.9
    assert configs["w4a16"]["speedup_b1"] == pytest.approx(2.5)  # one request's decode: 250 vs 100 tok/s
    assert "speedup_b1" not in configs["hf-eager"]  # measured at batch 1 only: `speedup` already is that
    speculative = [{"prompt": "chat", "strategy": "plain", "tokens_per_s": 10.0},
                   {"prompt": "chat", "strategy": "ngram", "tokens_per_s": 15.0, "acceptance_rate": 0.5},
                   {"prompt": "code", "strategy": "plain", "tokens_per_s": 20.0},
                   {"prompt": "code", "strategy": "ngram", "tokens_per_s": 30.0, "num_fallbacks": 1}]
    block = metrics_block(speculative)
    assert block["baselines"]["code / ngram"] == "code / plain" and block["price_per_gpu_hour"] is None
    assert block["configs"]["chat / ngram"] == {"throughput_tok_s": 15.0, "acceptance_rate": 0.5, "speedup": 1.5}
    assert block["configs"]["code / ngram"]["fallbacks"] == 1
    quality = metrics_block([{"config": "fp32", "perplexity": 10.0}, {"config": "rtn", "perplexity": 11.0},
                             {"config": "rtn", "perplexity": 10.5}])
    assert quality["configs"]["rtn"]["quality_delta_pct"] == pytest.approx(10.0)
    assert quality["configs"]["rtn #2"]["quality_delta_pct"] == pytest.approx(5.0)  # a repeated name is kept
    assert "| rtn #2 |" in metrics_markdown(quality)


@pytest.mark.parametrize("path", sorted((ROOT / "bench" / "results").glob("*.json")), ids=lambda p: p.stem)
def test_every_committed_result_file_gets_a_block(path):
    data = json.loads(path.read_text())
    tables = [data] if "rows" in data else [v for v in data.values() if isinstance(v, dict) and "rows" in v]
    for table in tables:
        block = metrics_block(table["rows"])
        assert len(block["configs"]) == sum(not row.get("error") for row in table["rows"])


def test_bench_writer_adds_the_block(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "bench"))
    monkeypatch.setattr(common, "RESULTS", tmp_path)  # the writer's output folder, not its behaviour
    rows = [{"config": "bf16", "tokens_per_s": 10.0}, {"config": "w4a16", "tokens_per_s": 12.0}]
    path = common.write_results("demo", "demo", ["config", "tokens_per_s"], rows, {"device": "cpu"},
                                price_per_gpu_hour=1.8)
    written = json.loads(path.read_text())
    assert written["metrics"]["configs"]["w4a16"]["speedup"] == pytest.approx(1.2)
    assert written["metrics"]["configs"]["w4a16"]["cost_per_mtok_usd"] == pytest.approx(1.8 / (12 * 3600) * 1e6)
    assert "Standard metrics" in (tmp_path / "demo.md").read_text()


def test_generator_feeds_the_exporter_over_http():
    model = random_model(TINY, dtype=torch.float32, device="cpu", seed=0)
    metrics = ServingMetrics("w16a16", price_per_gpu_hour=2.0)
    generator = Generator(model, max_batch=2, max_seq=32, metrics=metrics)
    server = metrics.serve(0)
    try:
        result = generator.generate([[1, 2, 3, 4], [5, 6]], 6)
        text = scrape(server.url)
    finally:
        server.close()
    labels = {"config": "w16a16"}
    assert sum_samples(text, "accel_requests_total", labels) == 2
    assert sum_samples(text, "accel_prompt_tokens_total", labels) == 6
    assert sum_samples(text, "accel_generation_tokens_total", labels) == 12
    assert sum_samples(text, "accel_time_to_first_token_seconds_count", labels) == 1
    assert sum_samples(text, "accel_time_to_first_token_seconds_sum", labels) == pytest.approx(result.ttft_s)
    assert sum_samples(text, "accel_time_per_output_token_seconds_count", labels) == len(result.decode_times_s) == 5
    assert sum_samples(text, "accel_memory_bytes", {"kind": "kv_cache"}) == generator.cache.nbytes()
    assert sum_samples(text, "accel_memory_bytes", {"kind": "weights"}) > 0
    throughput = sum_samples(text, "accel_throughput_tokens_per_second", labels)
    assert throughput == pytest.approx(result.decode_tokens_per_s)
    cost = sum_samples(text, "accel_cost_per_million_tokens_usd", labels)
    assert cost == pytest.approx(cost_per_million_tokens(throughput, 2.0))
    with pytest.raises(OSError):  # closed: the port is free again and nothing answers
        scrape(server.url)


def test_speculative_run_sets_acceptance_and_per_position_counters():
    torch.manual_seed(0)
    target = LlamaForCausalLM(TINY).eval()
    config = SpeculativeConfig(strategy="ngram", num_speculative_tokens=3)
    drafter = build_drafter(get_registry(), config, target, tokenizer=None)  # ngram needs no tokenizer
    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 7, 8, 5, 6, 7, 8, 5, 6]])
    _, request = speculative_generate(target, ids, drafter, 24, SamplingParams(), config)
    assert request.num_drafted_tokens > 0
    metrics = ServingMetrics("ngram")
    metrics.observe_speculative(request)
    metrics.set_quality_delta("perplexity_pct", 0.0)  # lossless: greedy output equals plain decoding
    text = metrics.render()
    labels = {"config": "ngram"}
    assert sum_samples(text, "accel_spec_decode_num_draft_tokens_total", labels) == request.num_drafted_tokens
    assert sum_samples(text, "accel_spec_decode_num_accepted_tokens_total", labels) == request.num_accepted_tokens
    assert sum_samples(text, "accel_spec_decode_num_accepted_tokens_per_pos_total", labels) == \
        request.num_accepted_tokens
    assert sum_samples(text, "accel_spec_decode_acceptance_rate", labels) == pytest.approx(request.acceptance_rate)
    assert sum_samples(text, "accel_spec_decode_fallbacks_total", labels) == request.num_fallbacks
    assert sum_samples(text, "accel_quality_delta", {"metric": "perplexity_pct"}) == 0.0
    with pytest.raises(MetricsError, match="must be a finite number"):
        metrics.set_quality_delta("perplexity_pct", float("nan"))


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(MetricsError, match="cannot serve metrics on 127.0.0.1:.*pick another --metrics-port"):
            ServingMetrics().serve(busy.getsockname()[1])


@pytest.mark.slow
def test_run_speculative_serves_metrics_while_it_runs():
    """The real `sage infer run-speculative --metrics-port` process, scraped by URL until the request is in."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
    code = "import sys; from accel.tools.cli import main; sys.argv[0] = 'sage'; main()"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "infer", "run-speculative", "--max-new-tokens", "12", "--metrics-port", "0",
         "--metrics-hold", "120", "--price-per-gpu-hour", "2.0", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**environ, "COLUMNS": "200"},
    )
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:  # the exporter starts before the model loads
            line = process.stderr.readline()
            if "metrics at " in line:
                url = line.split("metrics at ", 1)[1].split()[0]
        assert url is not None, "the command never printed its metrics URL"
        assert "# TYPE accel_requests_total counter" in scrape(url)  # served while the model still loads
        deadline = time.monotonic() + 400
        text = ""
        while time.monotonic() < deadline and process.poll() is None:
            text = scrape(url)
            if sum_samples(text, "accel_requests_total", {"config": "speculative-ngram"}) == 1:
                break
            time.sleep(1)
        assert sum_samples(text, "accel_requests_total", {"config": "speculative-ngram"}) == 1, text
        assert sum_samples(text, "accel_generation_tokens_total") > 0
        assert sum_samples(text, "accel_spec_decode_num_drafts_total") >= 0
        assert sum_samples(text, "accel_cost_per_million_tokens_usd") > 0
        assert sum_samples(text, "accel_gpu_hour_price_usd") == 2.0
    finally:
        process.terminate()
        process.communicate(timeout=30)
