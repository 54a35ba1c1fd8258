"""The vLLM adapter: EngineArgs and the `vllm serve` command line for each artifact, what it refuses, and (when vLLM
is installed in .venv/engines) vLLM's own parser reading the command line back and its engine config builder
taking the artifact (model config, compressed-tensors config, KV cache dtype, speculative config) on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accel.integration.engines import EngineConfigError, vllm_deployment
from accel.integration.engines.vllm import VLLM_VERSION_CHECKED

from .engines_fixtures import KV8_INT, config, engine_installed, run_engine_checks, write_artifacts

G32 = {"weight_bits": 4, "method": "rtn", "group_size": 32}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_artifacts(tmp_path_factory.mktemp("artifacts"))


def flags(argv: list[str]) -> dict[str, str | None]:
    """--flag value pairs of an argv (a bare flag maps to None)."""
    out: dict[str, str | None] = {}
    for index, token in enumerate(argv):
        if token.startswith("--"):
            following = argv[index + 1] if index + 1 < len(argv) else None
            out[token] = None if following is None or following.startswith("--") else following
    return out


def test_compressed_tensors_artifact_with_fp8_kv_scales(artifacts):
    plan = vllm_deployment(artifacts["w4-g64-fp8kv"])  # the manifest's config: fp8 KV
    assert plan.engine_args == {
        "model": str(artifacts["w4-g64-fp8kv"]), "dtype": "float16", "quantization": "compressed-tensors",
        "kv_cache_dtype": "fp8", "max_model_len": 512, "tensor_parallel_size": 1, "gpu_memory_utilization": 0.9,
        "enforce_eager": False, "speculative_config": None,
    }
    assert any("capped at the model's max_position_embeddings 512" in note for note in plan.notes)
    assert not any("without calibrated scales" in note for note in plan.notes)  # the artifact has them
    argv = plan.serve_argv(port=8100)
    assert argv[:3] == ["vllm", "serve", str(artifacts["w4-g64-fp8kv"])]
    assert flags(argv) == {"--host": "127.0.0.1", "--port": "8100", "--dtype": "float16",
                           "--quantization": "compressed-tensors", "--kv-cache-dtype": "fp8", "--max-model-len": "512",
                           "--tensor-parallel-size": "1", "--gpu-memory-utilization": "0.9"}


def test_int_kv_maps_to_per_token_head_and_ngram_to_the_speculative_config(artifacts):
    profile = config(**G32, **KV8_INT, speculative={"strategy": "ngram", "num_speculative_tokens": 5})
    plan = vllm_deployment(artifacts["w4-g32-sym"], profile, max_model_len=256)
    assert plan.engine_args["kv_cache_dtype"] == "int8_per_token_head" and plan.engine_args["max_model_len"] == 256
    assert plan.engine_args["speculative_config"] == {"method": "ngram", "num_speculative_tokens": 5,
                                                      "prompt_lookup_min": 1, "prompt_lookup_max": 4}
    assert any("fixed 5 tokens per step" in note for note in plan.notes)
    spec = flags(plan.serve_argv())["--speculative-config"]
    assert json.loads(spec) == plan.engine_args["speculative_config"]
    int4 = config(**G32, kv_bits_prefill=4, kv_bits_decode=4)
    assert vllm_deployment(artifacts["w4-g32-sym"], int4).engine_args["kv_cache_dtype"] == "int4_per_token_head"
    mixed = vllm_deployment(artifacts["w4-g32-sym"], config(**G32, kv_bits_prefill=8, kv_bits_decode=4))
    assert any("stored at the decode precision (4 bits)" in note for note in mixed.notes)


def test_draft_model_and_what_vllm_cannot_run(artifacts):
    draft = {"strategy": "draft_model", "draft_model": str(artifacts["dense"])}
    plan = vllm_deployment(artifacts["w4-g32-sym"], config(**G32, speculative=draft))
    assert plan.engine_args["speculative_config"] == {"method": "draft_model", "model": str(artifacts["dense"]),
                                                      "num_speculative_tokens": 4}
    with pytest.raises(EngineConfigError, match="speculative.strategy 'layer_skip' has no vLLM .* counterpart"):
        vllm_deployment(artifacts["w4-g32-sym"], config(**G32, speculative={"strategy": "layer_skip"}))
    with pytest.raises(EngineConfigError, match="8-bit int kv scales .* vLLM loads only fp8"):
        vllm_deployment(artifacts["w4-g64-int8kv"])
    with pytest.raises(EngineConfigError, match="stores 3-bit weights; .* take 4 or 8 bits"):
        vllm_deployment(artifacts["w3-g32"])
    with pytest.raises(EngineConfigError, match="gpu_memory_utilization in \\(0, 1\\]"):
        vllm_deployment(artifacts["dense"], gpu_memory_utilization=0)


def test_awq_dense_w8a8_and_eager_mode(artifacts):
    awq = vllm_deployment(artifacts["awq-g128"])
    assert awq.engine_args["quantization"] is None and any("AutoAWQ" in note for note in awq.notes)
    assert vllm_deployment(artifacts["dense"]).engine_args["quantization"] is None
    assert vllm_deployment(artifacts["w8a8-int8"]).engine_args["quantization"] == "compressed-tensors"
    eager = config(**G32).model_copy(update={"enable_cuda_graphs": False})
    argv = vllm_deployment(artifacts["w4-g32-sym"], eager).serve_argv()
    assert "--enforce-eager" in argv and flags(argv)["--enforce-eager"] is None
    ascend = vllm_deployment(artifacts["w4-g32-sym"], config(**G32, kernel_backend="ascend"))
    assert any("vllm-ascend" in note for note in ascend.notes)


@pytest.mark.slow
def test_vllm_itself_parses_the_command_line_and_builds_the_engine_config(artifacts):
    if not engine_installed("vllm"):
        pytest.skip(f"vllm is not installed in .venv/engines (scripts/bootstrap; checked {VLLM_VERSION_CHECKED})")
    ngram = config(**G32, **KV8_INT, speculative={"strategy": "ngram"}).model_dump(mode="json")
    draft = config(**G32, speculative={"strategy": "draft_model", "draft_model": str(artifacts["dense"])})
    int8kv = str(artifacts["w4-g64-int8kv"])
    cases = {
        "fp8kv": {"artifact": str(artifacts["w4-g64-fp8kv"])},
        "g32-int8kv-ngram": {"artifact": str(artifacts["w4-g32-sym"]), "config": ngram},
        "g128-asym": {"artifact": str(artifacts["w4-g128-asym"])},
        "w8a8": {"artifact": str(artifacts["w8a8-int8"])},
        "awq": {"artifact": str(artifacts["awq-g128"])},
        "dense-draft": {"artifact": str(artifacts["w4-g32-sym"]), "config": draft.model_dump(mode="json")},
        # Written by hand, past the adapter: vLLM's own verdict on the int8 kv scales the adapter refuses.
        "int8kv-raw": {"deployment": {"model_path": int8kv, "engine_args": {
            "model": int8kv, "quantization": "compressed-tensors", "kv_cache_dtype": "fp8"}}},
    }
    results = run_engine_checks({name: {"engine": "vllm", **case} for name, case in cases.items()},
                                env={"VLLM_TARGET_DEVICE": "cpu"})
    reports = {name: result.get("report") for name, result in results.items()}
    fp8 = reports["fp8kv"]
    assert fp8 is not None, results["fp8kv"]
    assert fp8["quant_config"] == "CompressedTensorsConfig" and fp8["cache_dtype"] == "fp8"
    assert fp8["kv_cache_scheme"]["type"] == "float" and fp8["max_model_len"] == 512
    ngram_report = reports["g32-int8kv-ngram"]
    assert ngram_report is not None, results["g32-int8kv-ngram"]
    assert ngram_report["cache_dtype"] == "int8_per_token_head"
    assert ngram_report["speculative"] == {"method": "ngram", "num_speculative_tokens": 4}
    assert reports["g128-asym"]["quantization"] == "compressed-tensors", results["g128-asym"]
    assert reports["w8a8"]["quant_config"] == "CompressedTensorsConfig", results["w8a8"]
    assert reports["awq"]["quantization"] == "awq", results["awq"]  # detected from config.json
    assert reports["dense-draft"]["speculative"]["method"] == "draft_model", results["dense-draft"]
    assert "Currently supported kv cache quantization is num_bits=8, type=float" in results["int8kv-raw"]["error"]
