"""prune_model on a small random Llama: which layers are pruned at which ratio, masks in the format, and the
calibrated path (statistics of the inputs the already-pruned layers produce)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.errors import UnsupportedProfileError
from accel.plugins import EmptyConfig, PruningMethodSpec, load_registry
from accel.plugins.loader import PluginPolicy
from accel.plugins.registry import Registered
from accel.quantization.calibration import calibration_data
from accel.schema import QuantizationProfile, SparsityConfig
from accel.sparsity.method import PrunedWeight, PruningMethod
from accel.sparsity.pipeline import layer_ratio, prune_model
from accel.sparsity.structured import block_violations, nm_violations


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def registry():
    return load_registry(PluginPolicy())


def test_layer_ratio_follows_ignore_layer_ratios_and_targets():
    config = SparsityConfig(pattern="unstructured", ratio=0.5, layer_ratios={"down_proj": 0.3, "re:.*\\.1\\.": 0.0},
                            ignore=["model.layers.0.self_attn.k_proj"])
    assert layer_ratio("model.layers.0.self_attn.q_proj", config) == 0.5
    assert layer_ratio("model.layers.0.self_attn.k_proj", config) is None
    assert layer_ratio("model.layers.0.mlp.down_proj", config) == 0.3
    assert layer_ratio("model.layers.1.mlp.up_proj", config) is None  # ratio 0 = dense
    mlp_only = SparsityConfig(pattern="2:4", targets="mlp")
    assert layer_ratio("model.layers.0.self_attn.q_proj", mlp_only) is None
    assert layer_ratio("model.layers.0.mlp.gate_proj", mlp_only) == 0.5


def test_magnitude_prunes_every_decoder_linear_without_calibration(tiny, registry):
    head = tiny.lm_head.weight.clone()
    result = prune_model(tiny, None, SparsityConfig(pattern="2:4"), registry, progress=False)
    assert result.calibration_tokens == 0 and len(result.masks) == 14
    for name, mask in result.masks.items():
        weight = tiny.get_submodule(name).weight
        assert nm_violations(mask, 2, 4) == [] and mask.sum() == mask.numel() // 2
        assert (weight[~mask] == 0).all() and (weight[mask] != 0).all()
        assert result.layers[name]["sparsity"] == pytest.approx(0.5)
    assert torch.equal(tiny.lm_head.weight, head)  # embeddings and the head stay dense


def test_block_pattern_and_layer_ratios(tiny, registry):
    config = SparsityConfig(pattern="block", ratio=0.5, block_shape=(8, 8), layer_ratios={"o_proj": 0.25},
                            ignore=["v_proj"])
    result = prune_model(tiny, None, config, registry, progress=False)
    assert not any(name.endswith("v_proj") for name in result.masks)
    for name, mask in result.masks.items():
        assert block_violations(mask, (8, 8)) == []
        expected = 0.25 if name.endswith("o_proj") else 0.5
        assert result.layers[name]["sparsity"] == pytest.approx(expected, abs=1 / 16)


def test_refuses_pattern_none_and_unknown_methods(tiny, registry):
    with pytest.raises(UnsupportedProfileError, match="pattern is 'none'"):
        prune_model(tiny, None, SparsityConfig(pattern="none"), registry, progress=False)
    with pytest.raises(UnsupportedProfileError, match="unknown pruning method 'obs'"):
        prune_model(tiny, None, SparsityConfig(pattern="2:4", method="obs"), registry, progress=False)


class Recording(PruningMethod):
    """Magnitude pruning that records the statistics it is given, in call order."""

    requires_calibration = True

    def __init__(self) -> None:
        self.seen = []

    def prune_weight(self, weight, target, stats=None):
        self.seen.append(stats)
        mask = target.select(weight.abs())
        return PrunedWeight(weight * mask, mask)


@pytest.mark.slow  # the bundled tokenizer
def test_calibrated_methods_see_the_inputs_of_the_pruned_layers_before(tiny, registry):
    from accel.runtime.loaders import load_model

    tokenizer = load_model()[1]
    method = Recording()
    spec = PruningMethodSpec(name="recording", description="test", factory=lambda _c: method,
                             config_model=EmptyConfig, requires_calibration=True)
    builtin = registry.provider("pruning_method", "magnitude")
    registry.entries["pruning_method"]["recording"] = Registered(spec, builtin)
    calibration = QuantizationProfile(calibration_samples=4, calibration_sequence_length=16)
    config = SparsityConfig(pattern="unstructured", ratio=0.5, method="recording")
    result = prune_model(tiny, tokenizer, config, registry, calibration=calibration, batch_size=2, progress=False)
    assert result.calibration_tokens == 64
    stats = method.seen  # per layer: q, k, v, o, gate, up, down (module order)
    assert len(stats) == 14 and all(s.hessian is None for s in stats)  # no Hessian unless the method needs it
    assert stats[7] is stats[8] is stats[9]  # layer 1's q/k/v read one input: one observer
    # ... and that input comes from the already-pruned layer 0: the final model reproduces it.
    inputs = []
    hook = tiny.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: inputs.append(a[0]))
    with torch.no_grad():
        tiny(calibration_data(tokenizer, calibration))
    hook.remove()
    torch.testing.assert_close(stats[7].channel_norms, inputs[0].reshape(-1, 64).norm(dim=0), rtol=1e-4, atol=1e-5)
