"""The planner against every chip family's descriptor and every preset, and the plan in an artifact manifest."""

from __future__ import annotations

import json

import pytest

from accel.planning.chips import chip_families
from accel.planning.planner import DENSE, KV_KIND, LAYER_KINDS, _supported, plan_profile, record_plan, write_plan
from accel.plugins import load_registry
from accel.schema import QuantizationProfile
from accel.tools.presets import PRESETS, get_preset

REGISTRY = load_registry()
FAMILIES = chip_families()


def plan_for(chip: str, profile: QuantizationProfile):
    family = FAMILIES[chip]
    return plan_profile(profile, family.capability, REGISTRY, backend=family.backend, chip=chip)


@pytest.mark.parametrize("chip", sorted(FAMILIES))
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_family_and_preset(chip, preset):
    """Each layer kind is planned once; what runs is something the chip runs; refusals and warnings match the
    statuses; the kernel backend is the registry's answer for the planned op."""
    capability = FAMILIES[chip].capability
    plan = plan_for(chip, get_preset(preset).quantization)
    assert [layer.kind for layer in plan.layers] == [*LAYER_KINDS, KV_KIND]
    for layer in plan.layers:
        if layer.status != "refused":
            assert _supported(layer.planned, capability), (layer.kind, layer.planned)
        assert (layer.status == "fallback") == (layer.planned != layer.requested), layer
        if layer.op != "linear":
            assert layer.backend == REGISTRY.select_kernel(layer.op, capability).backend
    statuses = {layer.status for layer in plan.layers}
    assert bool(plan.refused) == ("refused" in statuses)
    assert any(s == "fallback" for s in statuses) <= bool(plan.warnings)
    assert json.loads(json.dumps(plan.kernel_meta()))["ok"] == plan.ok


@pytest.mark.parametrize("chip", ["ascend-910b", "mlu370", "dcu-k100-ai", "kunlun-p800"])
def test_fp8_kv_becomes_int8_kv_with_a_warning_on_chips_without_fp8(chip):
    profile = QuantizationProfile(kv_bits_prefill=8, kv_bits_decode=8, kv_type="float")
    plan = plan_for(chip, profile)
    kv = plan.layers[-1]
    assert (kv.requested, kv.planned, kv.status) == ("kv-fp8", "kv-int8", "fallback")
    assert plan.kv_format == "int8" and plan.ok
    assert any("fp8 KV cache -> int8 KV cache" in warning for warning in plan.warnings)


def test_fp8_w8a8_falls_back_to_int8_w8a8_and_says_to_requantize():
    plan = plan_for("ascend-910b", get_preset("fp8").quantization)
    linear = plan.layers[0]
    assert (linear.planned, linear.op, linear.backend, linear.status) == (
        "w8a8-int8", "w8a8_int8_linear", "ascend", "fallback")
    assert "re-quantize" in plan.warnings[0]


def test_nvidia_runs_every_preset_as_written():
    for preset in PRESETS:
        plan = plan_for("nvidia-h200", get_preset(preset).quantization)
        assert plan.ok and not [layer for layer in plan.layers if layer.status != "ok"], preset


def test_a_chip_without_the_format_or_a_fallback_refuses():
    plan = plan_for("ascend-310p", get_preset("w4a16").quantization)
    assert not plan.ok and "w4a16" in plan.refused[0] and "w8a16, w8a8-int8" in plan.refused[0]


def test_kernel_notes_say_when_a_vendor_kernel_runs_a_format_through_the_reference():
    plan = plan_for("ascend-910b", get_preset("kv4").quantization)
    kv = plan.layers[-1]
    assert kv.backend == "ascend" and kv.planned == "kv-int4" and "portable reference" in kv.note


def test_ignored_layers_stay_dense():
    plan = plan_for("mlu370", get_preset("w8a8").quantization)
    head = next(layer for layer in plan.layers if layer.kind == "lm_head")
    assert (head.planned, head.op, head.backend) == (DENSE, "linear", "torch")


def test_unsupported_sparsity_warns_dense_with_zeros():
    plan = plan_for("mlu370", get_preset("w4a16-2:4").quantization)
    assert any("dense-with-zeros" in warning for warning in plan.warnings) and plan.ok


def test_plan_recorded_in_the_manifest_keeps_other_entries(tmp_path):
    plan = plan_for("ascend-910b", get_preset("fp8-kv8").quantization)
    manifest = {"kernel_meta": {"reference": {"device": "cpu"}, "ascend": {"formats": {"a": 1}}}, "files": {"x": 1}}
    recorded = record_plan(manifest, plan)
    assert recorded["kernel_meta"]["reference"] == {"device": "cpu"}
    assert recorded["kernel_meta"]["ascend"]["formats"] == {"a": 1}
    assert recorded["kernel_meta"]["ascend"]["plan"]["layers"]["attention.kv_cache"]["planned"] == "kv-int8"
    assert manifest["kernel_meta"]["ascend"] == {"formats": {"a": 1}}  # not mutated


def test_write_plan_into_a_real_artifact_which_still_verifies(tmp_path):
    """A tiny model saved as an artifact; the plan written into its manifest; the artifact still verifies."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from accel.runtime.artifact import save_artifact, verify_artifact
    from accel.schema import AccelConfig

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, "<unk>")))
    save_artifact(model, tokenizer, tmp_path / "art", AccelConfig(), source="test")
    plan = plan_for("mlu370", get_preset("fp8-kv8").quantization)
    path = write_plan(tmp_path / "art", plan)
    manifest = verify_artifact(tmp_path / "art")
    assert path.name == "accel-manifest.json"
    assert manifest["kernel_meta"]["mlu"]["plan"]["chip"] == "mlu370"
    assert manifest["kernel_meta"]["mlu"]["plan"]["warnings"] == plan.warnings


def test_cuda_layers_say_where_their_launches_were_tuned():
    """accel-cuda's KernelChoice.note: nothing on a tuned card, the lender on a sibling, "untuned" elsewhere."""
    cuda = pytest.importorskip("accel_cuda.plugin")
    if "w4a16_linear" not in cuda.kernels():
        pytest.skip("accel-cuda without Triton: the reference kernels run, no launch tables")
    base = FAMILIES["nvidia-h100-sxm"].capability
    profile = get_preset("w4a16").quantization
    notes = {}
    for card in ("NVIDIA H100 80GB HBM3", "NVIDIA H800", "NVIDIA H100 PCIe"):
        plan = plan_profile(profile, base.model_copy(update={"device_name": card}), REGISTRY, backend="cuda")
        notes[card] = [layer.note for layer in plan.layers if layer.op == "w4a16_linear"]
        assert notes[card] and plan.ok, card
    assert all(note == "" for note in notes["NVIDIA H100 80GB HBM3"])
    assert all("borrowed" in note and "NVIDIA H200" in note for note in notes["NVIDIA H800"])
    assert all("no launch tuned for the NVIDIA H100 PCIe" in note for note in notes["NVIDIA H100 PCIe"])
