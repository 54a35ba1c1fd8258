"""AccelController.setup against the real registry and the host device."""

import pytest
import torch

from accel.controller import AccelController
from accel.errors import UnsupportedProfileError
from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.schema import AccelConfig, QuantizationProfile
from accel.tools.presets import get_preset


@pytest.fixture(scope="module")
def registry():
    return load_registry(PluginPolicy())


def test_setup_records_choices(registry):
    controller = AccelController(registry)
    config = AccelConfig(quantization=QuantizationProfile(weight_bits=4, method="rtn"))
    report = controller.setup(config)
    assert report.ok and controller.config is config
    stats = controller.get_stats()
    assert stats["configured"] and stats["scheme"] == "w4a16" and stats["backend"] == report.backend
    assert stats["plugins_failed"] == []


def test_setup_refuses_with_every_reason(registry):
    controller = AccelController(registry)
    config = get_preset("w4a16-2:4")
    config.quantization.method = "no-such-method"
    with pytest.raises(UnsupportedProfileError) as excinfo:
        controller.setup(config)
    message = str(excinfo.value)
    assert "quantization.method 'no-such-method'" in message and "no sparse kernel for 2:4" in message
    with pytest.raises(RuntimeError, match="setup"):
        _ = controller.config


def test_named_backend_that_is_absent(registry):
    config = AccelConfig(quantization=QuantizationProfile(kernel_backend="nonexistent"))
    with pytest.raises(UnsupportedProfileError, match="unknown kernel backend 'nonexistent'"):
        AccelController(registry).setup(config)


def test_unknown_draft_strategy(registry):
    config = get_preset("spec-ngram")
    config.speculative.strategy = "eagle"
    with pytest.raises(UnsupportedProfileError, match="speculative.strategy 'eagle'"):
        AccelController(registry).setup(config)


@pytest.mark.slow
def test_get_quantized_model_writes_the_artifact(registry, tmp_path):
    from accel.quantization.qlinear import QuantLinear
    from accel.runtime.loaders import load_artifact

    controller = AccelController(registry)
    controller.setup(get_preset("w4a16-rtn"))
    model = controller.get_quantized_model(None, out=str(tmp_path / "a"))
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 210
    assert controller.get_stats()["quantization"]["layers_quantized"] == 210
    loaded, _, manifest = load_artifact(tmp_path / "a")
    assert manifest["accel_config"]["metadata"]["preset"] == "w4a16-rtn"
    ids = torch.tensor([[1, 2, 3, 4]])
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear):
            shipped = loaded.get_submodule(name).dequantized_weight(torch.float32)
            assert torch.equal(shipped, module.dequantized_weight(torch.float32)), name
    # Unquantized tensors (embedding, norms) ship in fp16, so logits agree to fp16 rounding.
    with torch.no_grad():
        torch.testing.assert_close(loaded.float()(ids).logits, model(ids).logits, rtol=0, atol=0.25)


@pytest.mark.slow
def test_run_speculative_decode_matches_plain_greedy(registry):
    from accel.speculative.decode import plain_generate
    from accel.speculative.verifier import SamplingParams

    controller = AccelController(registry)
    controller.setup(get_preset("spec-ngram"))
    controller.load_target()
    model, tokenizer = controller._target
    ids = tokenizer("def fib(n):\n    if n < 2:\n        return n\n    return", return_tensors="pt")["input_ids"]
    tokens = controller.run_speculative_decode(ids, 24)
    plain, _ = plain_generate(model, ids, 24, SamplingParams(), eos_token_id=tokenizer.eos_token_id)
    assert torch.equal(tokens, plain)
    request = controller.get_stats()["speculative_requests"][-1]
    assert request["num_generated_tokens"] == tokens.shape[1]


@pytest.mark.slow
def test_accelerate_cot_caps_thinking_and_records_the_request(registry):
    from accel.schema import CoTConfig

    controller = AccelController(registry)
    controller.setup(get_preset("spec-ngram"))
    controller.load_target()
    tokenizer = controller._target[1]
    ids = tokenizer("Tom has 3 apples and buys 4 more. How many apples does he have?", return_tensors="pt")["input_ids"]
    config = CoTConfig(mode="budget", thinking_budget=4, max_new_tokens=8, answer_tokens=4)
    result = controller.accelerate_cot(ids, config)
    assert result.lossy and result.thinking_tokens == 4 and result.stop_reason == "budget"
    request = controller.get_stats()["cot_requests"][-1]
    assert request["mode"] == "budget" and request["thinking_tokens"] == 4 and "text" not in request
    with pytest.raises(ValueError, match="speculative.strategy to layer_skip"):
        controller.accelerate_cot(ids, CoTConfig(mode="step_speculation"))
