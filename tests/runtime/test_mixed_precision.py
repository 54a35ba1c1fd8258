"""Per-layer scheme resolution (targets, ignore list, overrides) and the sensitivity scan."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.runtime.mixed_precision import matches, resolve_scheme, sensitivity_scan
from accel.schema import LayerOverride, QuantizationProfile


def test_target_matching():
    name = "model.layers.3.mlp.down_proj"
    assert matches("down_proj", name) and matches("mlp.down_proj", name) and matches(name, name)
    assert not matches("own_proj", name)
    assert matches("re:.*layers\\.3\\..*", name) and not matches("re:layers", name)


def test_ignore_overrides_and_skip():
    profile = QuantizationProfile(
        weight_bits=4, method="gptq", group_size=128,
        ignore=["lm_head", "re:.*layers\\.0\\..*"],
        overrides={
            "down_proj": LayerOverride(weight_bits=8, group_size=-1, method="rtn"),
            "re:.*layers\\.5\\.self_attn\\..*": LayerOverride(skip=True),
        },
    )
    assert resolve_scheme("lm_head", profile) is None
    assert resolve_scheme("model.layers.0.mlp.up_proj", profile) is None
    assert resolve_scheme("model.layers.5.self_attn.q_proj", profile) is None
    down = resolve_scheme("model.layers.2.mlp.down_proj", profile)
    assert (down.method, down.args.num_bits, down.args.strategy) == ("rtn", 8, "channel")
    up = resolve_scheme("model.layers.2.mlp.up_proj", profile)
    assert (up.method, up.args.num_bits, up.args.group_size) == ("gptq", 4, 128)


def test_fp8_and_full_precision_profiles():
    assert resolve_scheme("model.layers.0.mlp.up_proj", QuantizationProfile()) is None
    fp8 = QuantizationProfile(weight_bits=8, weight_type="float", group_size=-1, method="fp8")
    scheme = resolve_scheme("model.layers.0.mlp.up_proj", fp8)
    assert scheme.args.is_fp8 and scheme.args.strategy == "channel"


def test_sensitivity_scan_ranks_layers_and_restores_weights():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2)
    model = LlamaForCausalLM(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(0, 64, (2, 16))
    profile = QuantizationProfile(weight_bits=2, method="rtn", group_size=16)
    ranked = sensitivity_scan(model, windows, profile)
    assert sorted(r.layer for r in ranked) == [f"model.layers.{i}" for i in range(3)]
    assert [r.delta_nll for r in ranked] == sorted((r.delta_nll for r in ranked), reverse=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
