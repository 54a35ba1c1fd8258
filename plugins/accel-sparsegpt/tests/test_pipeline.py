"""Wanda and SparseGPT through accel's prune_model on a small random Llama, then GPTQ on the pruned model: the
calibrated path (sequential layers, shared statistics), and zeros that stay zeros after quantization."""

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.quantization.pipeline import quantize_model
from accel.quantization.qlinear import QuantLinear
from accel.runtime.loaders import bundled_cache_dir, load_model
from accel.schema import QuantizationProfile, SparsityConfig
from accel.sparsity.pipeline import prune_model

pytestmark = pytest.mark.slow  # the bundled tokenizer

CALIBRATION = {"calibration_samples": 4, "calibration_sequence_length": 32}


@pytest.fixture(scope="module")
def tokenizer():
    if not (bundled_cache_dir() / "config.json").is_file():
        load_model()  # converts the bundled GGUF once
    return AutoTokenizer.from_pretrained(bundled_cache_dir())


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def registry():
    return load_registry(PluginPolicy())


def mean_error(result) -> float:
    errors = [layer["output_error"] for layer in result.layers.values()]
    return sum(errors) / len(errors)


@pytest.mark.parametrize("pattern", ["2:4", "unstructured"])
def test_sparsegpt_moves_outputs_less_than_wanda(tiny, tokenizer, registry, pattern):
    results = {}
    for method in ("wanda", "sparsegpt"):
        model = LlamaForCausalLM(tiny.config).eval()
        model.load_state_dict(tiny.state_dict())
        results[method] = prune_model(model, tokenizer, SparsityConfig(pattern=pattern, method=method), registry,
                                      calibration=QuantizationProfile(**CALIBRATION), progress=False)
        assert results[method].calibration_tokens == 4 * 32
        assert len(results[method].masks) == 14
        for name, mask in results[method].masks.items():
            assert (model.get_submodule(name).weight[~mask] == 0).all()
    assert mean_error(results["sparsegpt"]) < mean_error(results["wanda"])


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_sparsegpt_2of4_then_w4_keeps_the_mask(tiny, tokenizer, registry, method):
    pruned = prune_model(tiny, tokenizer, SparsityConfig(pattern="2:4", method="sparsegpt"), registry,
                         calibration=QuantizationProfile(**CALIBRATION), progress=False)
    profile = QuantizationProfile(weight_bits=4, group_size=32, symmetric=False, method=method,
                                  sparsity_pattern="2:4", sparsity_ratio=0.5, **CALIBRATION)
    result = quantize_model(tiny, tokenizer, profile, registry, progress=False)
    for name, mask in pruned.masks.items():
        module = tiny.get_submodule(name)
        assert isinstance(module, QuantLinear)
        assert (module.dequantized_weight(torch.float32)[~mask] == 0).all(), name
        assert result.layers[name]["zeros_restored"] == 0  # the method itself gave them the zero code
