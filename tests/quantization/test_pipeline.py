"""quantize_model on a small random Llama (correctness of the procedure; quality is measured on the real
model in bench/): layers swapped, weights as the method defines them, smoothing exact, KV/act scales."""

import copy

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.plugins.records import QuantMethodSpec
from accel.quantization import WeightQuantArgs
from accel.quantization.method import QuantMethod, SmoothGroup
from accel.quantization.pipeline import _fold, quantize_model
from accel.quantization.qlinear import QuantLinear
from accel.quantization.rtn import RTN
from accel.quantization.weight_quant import fake_quantize
from accel.runtime.loaders import load_model
from accel.schema import QuantizationProfile

pytestmark = pytest.mark.slow  # loads the bundled tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return load_model()[1]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def registry():
    return load_registry(PluginPolicy())


def small(**fields):
    return QuantizationProfile(calibration_samples=4, calibration_sequence_length=32, **fields)


def test_rtn_swaps_every_linear_but_the_ignored_head(tiny, tokenizer, registry):
    original = copy.deepcopy(tiny)
    result = quantize_model(tiny, tokenizer, small(weight_bits=4, method="rtn", group_size=32), registry,
                            progress=False)
    assert result.calibration_tokens == 0  # RTN needs no calibration forwards
    quantized = {n for n, m in tiny.named_modules() if isinstance(m, QuantLinear)}
    assert len(quantized) == 14 and "lm_head" not in quantized
    args = WeightQuantArgs(num_bits=4, group_size=32)
    for name in quantized:
        expected = fake_quantize(original.get_submodule(name).weight.data, args)
        got = tiny.get_submodule(name).dequantized_weight(torch.float32)
        torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-6)  # fp16 scales, as shipped


class FixedSmoothing(QuantMethod):
    """Smooths every group with s = 1 + channel index / in, then RTN at 8 bits: a known transformation."""

    requires_calibration = True

    def smooth(self, group: SmoothGroup, args: WeightQuantArgs) -> torch.Tensor:
        width = group.inputs.shape[1]
        return 1.0 + torch.arange(width, dtype=torch.float32) / width

    def quantize_weight(self, weight, args, stats=None):
        if stats is None:
            raise ValueError("needs stats")
        return RTN().quantize_weight(weight, args)


def test_fold_preserves_the_layer_function(tiny):
    layer = tiny.model.layers[0].double()
    x = torch.randn(2, 8, 64, dtype=torch.float64)
    position = tiny.model.rotary_emb(x, torch.arange(8)[None])
    before = layer(x, position_embeddings=position)
    s = torch.rand(64, dtype=torch.float64) + 0.5
    _fold(layer, "input_layernorm", [layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj], s)
    s2 = torch.rand(128, dtype=torch.float64) + 0.5
    _fold(layer, "mlp.up_proj", [layer.mlp.down_proj], s2)
    torch.testing.assert_close(layer(x, position_embeddings=position), before)


def test_smoothing_groups_respect_gqa(tiny, tokenizer, registry, monkeypatch):
    fixed = QuantMethodSpec(name="rtn", description="fixed smoothing", factory=lambda _c: FixedSmoothing())
    monkeypatch.setattr(registry.entries["quant_method"]["rtn"], "record", fixed)
    result = quantize_model(tiny, tokenizer, small(weight_bits=8, method="rtn", group_size=-1), registry,
                            progress=False)
    smoothed = {name for name, info in result.layers.items() if "smoothed_into" in info}
    # v_proj -> o_proj is skipped under GQA (2 KV heads: 32 != 64); the other three groups fold.
    assert smoothed == {f"model.layers.{i}.{p}" for i in range(2)
                        for p in ("input_layernorm", "post_attention_layernorm", "mlp.up_proj")}
    assert result.calibration_tokens == 4 * 32


def test_kv_and_static_activation_scales(tiny, tokenizer, registry):
    profile = small(weight_bits=8, activation_bits=8, method="rtn", group_size=-1, activation_dynamic=False,
                    kv_bits_prefill=8, kv_bits_decode=8)
    result = quantize_model(tiny, tokenizer, profile, registry, progress=False)
    assert set(result.kv_scales) == {"model.layers.0.self_attn", "model.layers.1.self_attn"}
    k_scale, v_scale = result.kv_scales["model.layers.0.self_attn"]
    assert k_scale.shape == (1,) and float(k_scale) > 0 and float(v_scale) > 0
    q_proj = tiny.model.layers[0].self_attn.q_proj
    assert q_proj.act_args.dynamic is False and float(q_proj.input_scale) > 0


def test_quantized_head_unties_the_embedding(tiny, tokenizer, registry):
    embedding = tiny.model.embed_tokens.weight.data.clone()
    quantize_model(tiny, tokenizer, small(weight_bits=8, method="rtn", group_size=-1, ignore=[]), registry,
                   progress=False)
    assert isinstance(tiny.lm_head, QuantLinear) and not tiny.config.tie_word_embeddings
    assert torch.equal(tiny.model.embed_tokens.weight.data, embedding)
    assert isinstance(tiny.model.embed_tokens, nn.Embedding)
