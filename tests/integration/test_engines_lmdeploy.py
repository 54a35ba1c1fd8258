"""The LMDeploy adapter: which engine, model format, KV policy and speculative config an artifact maps to, what it
refuses, and (when LMDeploy is installed in .venv/engines) LMDeploy's own classes, CLI parser and quantization
loader agreeing with it, including on what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from accel.errors import ArtifactError
from accel.integration.engines import EngineConfigError, lmdeploy_deployment
from accel.integration.engines.lmdeploy import LMDEPLOY_VERSION_CHECKED

from .engines_fixtures import KV8_FLOAT, KV8_INT, config, engine_installed, run_engine_checks, write_artifacts

AWQ = {"weight_bits": 4, "method": "awq", "group_size": 128, "symmetric": False}
G32 = {"weight_bits": 4, "method": "rtn", "group_size": 32}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_artifacts(tmp_path_factory.mktemp("artifacts"))


def test_awq_export_goes_to_turbomind_with_the_kv_policy(artifacts):
    plan = lmdeploy_deployment(artifacts["awq-g128"], config(**AWQ, **KV8_INT))
    assert plan.backend == "turbomind"
    assert plan.engine_config == {"dtype": "float16", "tp": 1, "session_len": 512, "cache_max_entry_count": 0.8,
                                  "quant_policy": 8, "model_format": "awq"}
    assert plan.speculative_config is None
    assert any("online per head and token" in note for note in plan.notes)
    argv = plan.api_server_argv(port=23400)
    assert argv[:4] == ["lmdeploy", "serve", "api_server", str(artifacts["awq-g128"])]
    pairs = dict(zip(argv[4::2], argv[5::2], strict=False))
    assert pairs["--backend"] == "turbomind" and pairs["--model-format"] == "awq" and pairs["--quant-policy"] == "8"
    assert pairs["--server-port"] == "23400" and pairs["--session-len"] == "512"


def test_compressed_tensors_int4_and_the_manifest_config(artifacts):
    plan = lmdeploy_deployment(artifacts["w4-g32-sym"])  # no config: the one the manifest recorded
    assert (plan.backend, plan.engine_config["model_format"], plan.engine_config["quant_policy"]) == (
        "turbomind", "compressed-tensors", 0)
    assert lmdeploy_deployment(artifacts["w4-g128-asym"]).engine_config["model_format"] == "compressed-tensors"
    assert lmdeploy_deployment(artifacts["dense"]).engine_config["model_format"] == "hf"


def test_fp8_kv_needs_the_pytorch_engine(artifacts):
    plan = lmdeploy_deployment(artifacts["w4-g32-sym"], config(**G32, **KV8_FLOAT))
    assert plan.backend == "pytorch" and plan.engine_config["quant_policy"] == 16
    assert plan.engine_config["device_type"] == "cuda" and plan.engine_config["eager_mode"] is False
    assert "--device" in plan.api_server_argv()
    with pytest.raises(EngineConfigError, match="TurboMind has no fp8 KV cache.*the pytorch engine can"):
        lmdeploy_deployment(artifacts["w4-g32-sym"], config(**G32, **KV8_FLOAT), backend="turbomind")


def test_weights_neither_engine_loads_are_refused_with_both_reasons(artifacts):
    with pytest.raises(EngineConfigError) as caught:
        lmdeploy_deployment(artifacts["w4-g64-fp8kv"])
    message = str(caught.value)
    assert "group size 32" in message and "group size 64" in message  # the PyTorch engine's rule
    assert "TurboMind takes compressed-tensors group sizes (32, 128)" in message
    with pytest.raises(EngineConfigError, match="pack-quantized int4 weight-only, the artifact has int-quantized"):
        lmdeploy_deployment(artifacts["w8a8-int8"], backend="turbomind")
    with pytest.raises(EngineConfigError, match="backend 'tensorrt' is not an LMDeploy engine"):
        lmdeploy_deployment(artifacts["dense"], backend="tensorrt")


def test_speculative_decoding_maps_only_to_lmdeploys_own_methods(artifacts):
    with pytest.raises(EngineConfigError, match="speculative.strategy 'ngram' has no LMDeploy .* counterpart"):
        lmdeploy_deployment(artifacts["awq-g128"], config(**AWQ, speculative={"strategy": "ngram"}))
    with pytest.raises(EngineConfigError, match="needs speculative.draft_model"):
        lmdeploy_deployment(artifacts["awq-g128"], config(**AWQ, speculative={"strategy": "eagle3"}))
    eagle = {"strategy": "eagle3", "draft_model": "/models/eagle3-head", "num_speculative_tokens": 3}
    plan = lmdeploy_deployment(artifacts["awq-g128"], config(**AWQ, speculative=eagle))
    assert plan.backend == "pytorch"  # TurboMind ignores speculative decoding
    assert plan.speculative_config == {"method": "eagle3", "model": "/models/eagle3-head", "num_speculative_tokens": 3}
    argv = plan.api_server_argv()
    assert argv[argv.index("--speculative-algorithm") + 1] == "eagle3"
    assert argv[argv.index("--speculative-num-draft-tokens") + 1] == "3"


def test_domestic_devices_eager_mode_and_bad_fields(artifacts):
    plan = lmdeploy_deployment(artifacts["w4-g32-sym"], config(**G32, kernel_backend="mlu"))
    assert plan.backend == "pytorch" and plan.engine_config["device_type"] == "camb"
    with pytest.raises(EngineConfigError, match="quantization.kernel_backend 'kunlun' has no LMDeploy device"):
        lmdeploy_deployment(artifacts["w4-g32-sym"], config(**G32, kernel_backend="kunlun"))
    eager = config(**G32, **KV8_FLOAT).model_copy(update={"enable_cuda_graphs": False})
    assert "--eager-mode" in lmdeploy_deployment(artifacts["w4-g32-sym"], eager).api_server_argv()
    with pytest.raises(EngineConfigError, match="asks for quantization.weight_bits 8, but .* stores 4-bit weights"):
        lmdeploy_deployment(artifacts["w4-g32-sym"], config(weight_bits=8, method="rtn"))
    with pytest.raises(EngineConfigError, match="cache_max_entry_count in \\(0, 1\\)"):
        lmdeploy_deployment(artifacts["dense"], cache_max_entry_count=1.5)


def test_a_tampered_artifact_is_refused(artifacts, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(artifacts["awq-g128"], copy)
    config_json = copy / "config.json"
    config_json.write_text(config_json.read_text().replace('"group_size": 128', '"group_size": 256'))
    with pytest.raises(ArtifactError, match="config.json does not match its sha256"):
        lmdeploy_deployment(copy)


@pytest.mark.slow
def test_lmdeploy_itself_accepts_what_the_adapter_maps_and_refuses_what_it_refuses(artifacts):
    if not engine_installed("lmdeploy"):
        pytest.skip(f"lmdeploy is not in .venv/engines (scripts/bootstrap; checked {LMDEPLOY_VERSION_CHECKED})")
    raw = {"dtype": "float16", "tp": 1, "session_len": 512, "cache_max_entry_count": 0.8, "quant_policy": 0}
    eagle = {"strategy": "eagle3", "draft_model": "/models/eagle3-head", "num_speculative_tokens": 3}
    cases = {
        "awq": {"artifact": str(artifacts["awq-g128"]), "config": config(**AWQ, **KV8_INT).model_dump(mode="json")},
        "g32-fp8kv": {"artifact": str(artifacts["w4-g32-sym"]),
                      "config": config(**G32, **KV8_FLOAT).model_dump(mode="json")},
        "g128": {"artifact": str(artifacts["w4-g128-asym"])},
        "dense": {"artifact": str(artifacts["dense"])},
        "eagle": {"artifact": str(artifacts["awq-g128"]), "config": config(**AWQ, speculative=eagle).model_dump(
            mode="json")},
        # Written by hand, past the adapter: what LMDeploy says about the combinations the adapter refuses.
        "g128-on-pytorch": {"deployment": {"backend": "pytorch", "model_path": str(artifacts["w4-g128-asym"]),
                                           "engine_config": {**raw, "model_format": "compressed-tensors",
                                                             "device_type": "cuda", "eager_mode": False}}},
        "fp8kv-on-turbomind": {"deployment": {"backend": "turbomind", "model_path": str(artifacts["dense"]),
                                              "engine_config": {**raw, "quant_policy": 16, "model_format": "hf"}}},
    }
    results = run_engine_checks({name: {"engine": "lmdeploy", **case} for name, case in cases.items()})
    reports = {name: result.get("report") for name, result in results.items()}
    assert reports["awq"] == {"engine_config": "TurbomindEngineConfig", "quant_policy": 8, "model_format": "awq",
                              "speculative": None}, results["awq"]
    pytorch = reports["g32-fp8kv"]
    assert pytorch["engine_config"] == "PytorchEngineConfig" and pytorch["quant_policy"] == 16, results["g32-fp8kv"]
    assert pytorch["pytorch_quantization"] == {"quant_method": "compressed-tensors", "bits": 4, "group_size": 32}
    assert reports["g128"]["model_format"] == "compressed-tensors" and reports["dense"]["model_format"] == "hf"
    assert reports["eagle"]["speculative"]["method"] == "eagle3", results["eagle"]
    assert "Unsupported compressed-tensors `group_size`: expected 32, got 128" in results["g128-on-pytorch"]["error"]
    assert "FP8 quantization is not supported" in results["fp8kv-on-turbomind"]["error"]
    assert json.dumps(results)  # every report is plain JSON
