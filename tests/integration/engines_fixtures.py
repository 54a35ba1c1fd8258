"""Shared by tests/integration/test_engines_*.py: tiny real artifacts, and running the real engines' checks.

The artifacts are written by accel's own writers (save_artifact, export_autoawq) from a 2-layer Llama with
widths 128 and 256, so group sizes 32, 64 and 128 are stored as asked. The engines (LMDeploy, vLLM) are installed
by scripts/bootstrap with --no-deps into .venv/engines (requirements-engines.txt): they pin other torch and
compressed-tensors versions than accel's, so they are imported only in a child interpreter with that folder
first on its path, where each deployment's validate() runs against the engine's own classes and parsers.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.artifact import save_artifact
from accel.runtime.export_awq import export_autoawq
from accel.schema import AccelConfig

ROOT = Path(__file__).resolve().parents[2]
ENGINES = Path(os.environ.get("ACCEL_ENGINES_PATH") or ROOT / ".venv" / "engines")


def config(**quantization: Any) -> AccelConfig:
    """An AccelConfig with these QuantizationProfile fields (and speculative=... when given)."""
    speculative = quantization.pop("speculative", None)
    return AccelConfig.model_validate({"quantization": quantization, "speculative": speculative})


def _tiny() -> tuple[nn.Module, PreTrainedTokenizerFast]:
    vocab = {word: index for index, word in enumerate(["[UNK]", "[EOS]", *(f"w{i}" for i in range(126))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]")
    llama = LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                        tie_word_embeddings=True, architectures=["LlamaForCausalLM"])
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(llama, dtype=torch.float16).eval(), tokenizer


def _quantized(model: nn.Module, args: WeightQuantArgs, acts: ActivationQuantArgs | None = None) -> nn.Module:
    model = copy.deepcopy(model)
    for name, linear in list(model.model.layers.named_modules()):
        if isinstance(linear, nn.Linear):
            weight = quantize(linear.weight, args)
            weight.scale = weight.scale.to(torch.float16)
            parent, _, child = name.rpartition(".")
            setattr(model.model.layers.get_submodule(parent), child, QuantLinear(weight, linear.bias, acts, None))
    return model


KV8_FLOAT = {"kv_bits_prefill": 8, "kv_bits_decode": 8, "kv_type": "float"}
KV8_INT = {"kv_bits_prefill": 8, "kv_bits_decode": 8, "kv_type": "int"}
# name -> (weight args or None for dense, activation args, profile fields, kv scales: None / "float" / "int", awq?)
ARTIFACTS: dict[str, tuple[Any, Any, dict[str, Any], str | None, bool]] = {
    "dense": (None, None, {}, None, False),
    "w4-g32-sym": (WeightQuantArgs(4, True, "group", 32), None, {"weight_bits": 4, "method": "rtn", "group_size": 32},
                   None, False),
    "w4-g128-asym": (WeightQuantArgs(4, False, "group", 128), None,
                     {"weight_bits": 4, "method": "rtn", "group_size": 128, "symmetric": False}, None, False),
    "w4-g64-fp8kv": (WeightQuantArgs(4, True, "group", 64), None,
                     {"weight_bits": 4, "method": "rtn", "group_size": 64, **KV8_FLOAT}, "float", False),
    "w4-g64-int8kv": (WeightQuantArgs(4, True, "group", 64), None,
                      {"weight_bits": 4, "method": "rtn", "group_size": 64, **KV8_INT}, "int", False),
    "w3-g32": (WeightQuantArgs(3, True, "group", 32), None, {"weight_bits": 3, "method": "rtn", "group_size": 32},
               None, False),
    "w8a8-int8": (WeightQuantArgs(8, True, "channel", -1), ActivationQuantArgs(), {
        "weight_bits": 8, "activation_bits": 8, "method": "rtn", "group_size": -1}, None, False),
    "awq-g128": (WeightQuantArgs(4, False, "group", 128), None,
                 {"weight_bits": 4, "method": "awq", "group_size": 128, "symmetric": False}, None, True),
}


def write_artifacts(root: Path) -> dict[str, Path]:
    """Every artifact of ARTIFACTS under `root`, written by accel's writers."""
    model, tokenizer = _tiny()
    paths = {}
    for name, (weights, acts, profile, kv, awq) in ARTIFACTS.items():
        quantized = model if weights is None else _quantized(model, weights, acts)
        accel_config = AccelConfig.model_validate({"quantization": profile})
        out = root / name
        if awq:
            export_autoawq(quantized, tokenizer, out, accel_config, source="tiny")
        else:
            scales = None if kv is None else {
                f"model.layers.{i}.self_attn": (torch.tensor([0.02]), torch.tensor([0.03])) for i in range(2)}
            save_artifact(quantized, tokenizer, out, accel_config, source="tiny", kv_scales=scales)
        paths[name] = out
    return paths


def engine_installed(package: str) -> bool:
    """Whether the engine's package is in the engines folder; in CI (CI=true) its absence is a failure, since
    scripts/bootstrap installs it there."""
    present = (ENGINES / package).is_dir()
    if not present and os.environ.get("CI"):
        pytest.fail(f"{package} is missing from {ENGINES}: scripts/bootstrap installs it (requirements-engines.txt)")
    return present


CHECK = """
import json, sys
from accel.integration.engines import LMDeployDeployment, VLLMDeployment, lmdeploy_deployment, vllm_deployment
from accel.schema import AccelConfig
results = {}
for name, case in json.load(sys.stdin).items():
    try:
        if "deployment" in case:  # a deployment written by hand: the engine's own verdict, no adapter in between
            kind = LMDeployDeployment if case["engine"] == "lmdeploy" else VLLMDeployment
            deployment = kind(**case["deployment"])
        else:
            make = lmdeploy_deployment if case["engine"] == "lmdeploy" else vllm_deployment
            config = AccelConfig.model_validate(case["config"]) if case.get("config") else None
            deployment = make(case["artifact"], config, **case.get("kwargs", {}))
        results[name] = {"report": deployment.validate()}
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}"}
print("RESULTS " + json.dumps(results, default=str))
"""


def run_engine_checks(cases: dict[str, dict[str, Any]], env: dict[str, str] | None = None) -> dict[str, Any]:
    """validate() every case in one child interpreter with the engines first on its path; {name: {report | error}}."""
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ENGINES), str(ROOT)]), "HF_HUB_OFFLINE": "1",
               **(env or {})}
    done = subprocess.run([sys.executable, "-c", CHECK], input=json.dumps(cases), capture_output=True, text=True,
                          env=environ, timeout=600, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULTS ")]
    assert done.returncode == 0 and lines, done.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULTS "))
