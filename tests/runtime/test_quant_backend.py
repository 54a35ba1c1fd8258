"""Runtime linears per layer format: each equals QuantLinear's reference forward, stacking changes nothing, and
artifacts made by the quantize pipeline load for inference with the logits of load_artifact's reference model."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

from accel.plugins import get_registry
from accel.quantization.activation_quant import ActivationQuantArgs, quantize_activation
from accel.quantization.pipeline import quantize_model
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.artifact import load_artifact, save_artifact
from accel.runtime.generate import Generator
from accel.runtime.loaders import bundled_cache_dir, load_model
from accel.runtime.quant_backend import (
    DenseLinear,
    DequantLinear,
    FP8Linear,
    KernelSelector,
    QuantizedActivation,
    ReferenceLinear,
    W4A16Linear,
    W8A8Int8Linear,
    fuse_linears,
    linear_format,
    load_for_inference,
    runtime_linear,
)
from accel.schema import AccelConfig, QuantizationProfile

PROMPT = "The capital of France is a city that"


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def kernels() -> KernelSelector:
    return KernelSelector("cpu")


def quant_linear(
    args: WeightQuantArgs,
    acts: ActivationQuantArgs | None = None,
    *,
    out_features: int = 40,
    in_features: int = 200,
    bias: bool = True,
    seed: int = 0,
) -> QuantLinear:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=gen)
    qweight = quantize(weight, args)
    qweight.scale = qweight.scale.to(torch.float16)  # as artifacts store them
    b = torch.randn(out_features, generator=gen) if bias else None
    return QuantLinear(qweight, b, acts)


# ------------------------------------------------------------------------------------- formats

W4 = WeightQuantArgs(4, True, "group", 64)  # in_features 200: a partial last group
W4_ASYM = WeightQuantArgs(4, False, "group", 64)
W4_CHANNEL = WeightQuantArgs(4, False, "channel", -1)
W4_TENSOR = WeightQuantArgs(4, True, "tensor", -1)
W8 = WeightQuantArgs(8, True, "channel", -1)
W3 = WeightQuantArgs(3, False, "group", 32)
FP8 = WeightQuantArgs(8, True, "channel", -1, "float")
STATIC_FP8 = ActivationQuantArgs(type="float", strategy="tensor", dynamic=False)
STATIC_INT8 = ActivationQuantArgs(strategy="tensor", dynamic=False)


@pytest.mark.parametrize(
    ("args", "acts", "name", "layer_format", "op", "module"),
    [
        (W4, None, "w4a16", "pack-quantized", "w4a16_linear", W4A16Linear),
        (W4_ASYM, None, "w4a16", "pack-quantized", "w4a16_linear", W4A16Linear),
        (W4_CHANNEL, None, "w4a16", "pack-quantized", "w4a16_linear", W4A16Linear),
        (W4_TENSOR, None, "w4a16", "pack-quantized", "w4a16_linear", W4A16Linear),
        (W8, None, "w8a16", "pack-quantized", "dequant_linear", DequantLinear),
        (W3, None, "w3a16", "pack-quantized", "dequant_linear", DequantLinear),
        (FP8, None, "w8a16-fp8", "naive-quantized", "dequant_linear", DequantLinear),
        (W8, ActivationQuantArgs(), "w8a8-int8", "int-quantized", "w8a8_int8_linear", W8A8Int8Linear),
        (FP8, ActivationQuantArgs(type="float"), "w8a8-fp8", "float-quantized", "fp8_linear", FP8Linear),
        (FP8, STATIC_FP8, "w8a8-fp8", "float-quantized", "fp8_linear", FP8Linear),
        # Outside the ops' contracts: QuantLinear's own forward.
        (W8, STATIC_INT8, "w8a8-int8", "int-quantized", "w8a8_int8_linear", ReferenceLinear),
        (
            WeightQuantArgs(8, True, "group", 64),
            ActivationQuantArgs(),
            "w8a8-int8",
            "int-quantized",
            "w8a8_int8_linear",
            ReferenceLinear,
        ),
        (
            FP8,
            ActivationQuantArgs(type="float", strategy="tensor"),
            "w8a8-fp8",
            "float-quantized",
            "fp8_linear",
            ReferenceLinear,
        ),
        (W8, ActivationQuantArgs(type="float"), "w8a8-fp8", "int-quantized", "fp8_linear", ReferenceLinear),
    ],
)
def test_each_format_equals_the_quant_linear_reference(args, acts, name, layer_format, op, module, kernels) -> None:
    layer = quant_linear(args, acts)
    if acts is not None and not acts.dynamic:
        layer.input_scale = torch.tensor([0.05])
    fmt = linear_format(layer)
    assert (fmt.name, fmt.layer_format, fmt.op, fmt.module) == (name, layer_format, op, module)
    runtime = runtime_linear(layer, kernels, torch.float32)
    assert type(runtime) is module and (runtime.op, runtime.backend) == (op, "reference")
    x = torch.randn(2, 3, 200, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(runtime(x), layer(x), rtol=1e-5, atol=1e-5)


def test_act_order_weights_run_the_reference(kernels) -> None:
    layer = quant_linear(W4)
    layer.weight_g_idx = torch.arange(200, dtype=torch.int32).flip(0) // 64
    runtime = runtime_linear(layer, kernels, torch.float32)
    assert isinstance(runtime, ReferenceLinear) and (runtime.op, runtime.backend) == ("w4a16_linear", "reference")


def test_dense_and_unknown_modules(kernels) -> None:
    linear = nn.Linear(8, 4)
    runtime = runtime_linear(linear, kernels, torch.bfloat16)
    assert isinstance(runtime, DenseLinear) and runtime.weight.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="nn.Linear or QuantLinear"):
        linear_format(nn.Conv1d(2, 2, 1))


@pytest.mark.parametrize(
    ("args", "acts"),
    [(W4, None), (W4_ASYM, None), (W8, None), (W8, ActivationQuantArgs()), (FP8, ActivationQuantArgs(type="float"))],
)
def test_stacked_layers_equal_their_parts(args, acts, kernels) -> None:
    parts = [
        runtime_linear(quant_linear(args, acts, out_features=n, bias=i != 1, seed=i), kernels, torch.float32)
        for i, n in enumerate((48, 16, 16))
    ]
    fused = fuse_linears(parts)
    assert fused is not None and type(fused) is type(parts[0]) and fused.out_features == 80
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), torch.cat([part(x) for part in parts], dim=-1))


def test_a_backends_prepare_runs_once_at_load(kernels) -> None:
    """KernelChoice.prepare converts a W4A16 layer's tensors once; its keyword arguments go with every call, and
    stacking prepared layers does not prepare them again. The conversion here is a real one the impl undoes
    (scales stored doubled), so a layer that skipped or repeated it would compute a different product."""
    reference = kernels.choose("w4a16_linear")
    assert reference is not None
    calls = {"prepare": 0}

    def prepare(packed, scale, zero_point, group_size):
        calls["prepare"] += 1
        return (packed, scale * 2, zero_point, group_size), {"scale_factor": 2.0}

    def impl(x, packed, scale, zero_point, group_size, scale_factor=1.0):
        return reference.impl(x, packed, scale / scale_factor, zero_point, group_size)

    choice = dataclasses.replace(reference, backend="doubled", impl=impl, prepare=prepare)
    parts = [quant_linear(W4_ASYM, seed=seed) for seed in (1, 2)]
    layers = [runtime_linear(part, _Fixed(choice), torch.float32) for part in parts]
    assert calls["prepare"] == 2
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(3))
    for layer, part in zip(layers, parts, strict=True):
        assert isinstance(layer, W4A16Linear) and layer.kernel_kwargs == {"scale_factor": 2.0}
        assert relative_error(layer(x), part(x)) < 1e-5
    stacked = W4A16Linear.fuse(layers)
    assert stacked is not None and calls["prepare"] == 2
    assert relative_error(stacked(x), torch.cat([part(x) for part in parts], dim=-1)) < 1e-5


class _Fixed:
    """A kernel selector that answers every op with one choice."""

    def __init__(self, choice) -> None:
        self.choice = choice
        self.device = torch.device("cpu")

    def choose(self, op: str):
        return self.choice


def test_mixed_parts_do_not_stack(kernels) -> None:
    parts = [
        runtime_linear(quant_linear(W4), kernels, torch.float32),
        runtime_linear(quant_linear(W4_ASYM), kernels, torch.float32),
    ]
    assert fuse_linears(parts) is None  # zero points on one side only
    assert fuse_linears([parts[0], runtime_linear(quant_linear(W8), kernels, torch.float32)]) is None


# ------------------------------------------------------------------------------ already quantized activations


@pytest.mark.parametrize(
    ("args", "acts", "act_quant"),
    [
        (W8, ActivationQuantArgs(), "int8"),
        (FP8, ActivationQuantArgs(type="float"), "fp8"),
        (FP8, STATIC_FP8, None),
        (W4, None, None),
    ],
    ids=["int8", "fp8", "fp8-static", "w4a16"],
)
def test_w8a8_layers_take_activations_a_fused_kernel_quantized(args, acts, act_quant, kernels) -> None:
    """Dynamic per-token W8A8 layers also take a QuantizedActivation (op w8a8_scaled_mm): the same output as
    quantizing x themselves. A static-scale fp8 layer and a weight-only one take 16-bit x only."""
    layer = quant_linear(args, acts)
    if acts is not None and not acts.dynamic:
        layer.input_scale = torch.tensor([0.05])
    runtime = runtime_linear(layer, kernels, torch.bfloat16)
    assert runtime.act_quant == act_quant
    x = torch.randn(2, 3, 200, generator=torch.Generator().manual_seed(1)).bfloat16()
    if act_quant is None:
        return
    fp8 = act_quant == "fp8"
    codes, scale = quantize_activation(x, ActivationQuantArgs(type="float" if fp8 else "int"))
    with torch.no_grad():
        assert torch.equal(runtime(QuantizedActivation(codes, scale, x.dtype)), runtime(x))


def test_a_layer_without_the_scaled_mm_op_refuses_quantized_activations(kernels) -> None:
    runtime = runtime_linear(quant_linear(W8, ActivationQuantArgs()), kernels, torch.float32)
    assert isinstance(runtime, W8A8Int8Linear)
    runtime.scaled_mm = None
    assert runtime.act_quant is None
    codes, scale = quantize_activation(torch.randn(2, 200), ActivationQuantArgs())
    with pytest.raises(ValueError, match="w8a8_scaled_mm is not available"):
        runtime(QuantizedActivation(codes, scale, torch.float32))
    layer = quant_linear(FP8, STATIC_FP8)
    layer.input_scale = torch.tensor([0.05])
    static = runtime_linear(layer, kernels, torch.float32)
    assert static.act_quant is None
    codes, scale = quantize_activation(torch.randn(2, 200), ActivationQuantArgs(type="float"))
    with pytest.raises(ValueError, match="static input_scale"):
        static(QuantizedActivation(codes, scale, torch.float32))


# ------------------------------------------------------------------------------------- artifacts (bundled)

PROFILES = {
    "w4a16-g128": dict(weight_bits=4, method="rtn", group_size=128),  # hidden 576: partial groups
    "w8a8-int8": dict(weight_bits=8, activation_bits=8, method="rtn", group_size=-1),
    "w8a8-fp8": dict(
        weight_bits=8, weight_type="float", activation_bits=8, activation_type="float", method="rtn", group_size=-1
    ),
}
EXPECTED_OP = {"w4a16-g128": "w4a16_linear", "w8a8-int8": "w8a8_int8_linear", "w8a8-fp8": "fp8_linear"}


@pytest.fixture(scope="module")
def bundled():
    return load_model(dtype=torch.float32)


@pytest.fixture(scope="module", params=list(PROFILES))
def artifact(request: pytest.FixtureRequest, bundled, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """An artifact of the bundled model: RTN through quantize_model, written by save_artifact (fp16)."""
    hf, tokenizer = bundled
    profile = QuantizationProfile(**PROFILES[request.param])
    model = copy.deepcopy(hf)
    quantize_model(model, tokenizer, profile, get_registry(), progress=False)
    path = tmp_path_factory.mktemp(request.param) / "artifact"
    save_artifact(model, tokenizer, path, AccelConfig(quantization=profile), source="bundled")
    return request.param, path


@pytest.mark.slow
def test_artifact_logits_match_the_reference_model(artifact, bundled) -> None:
    """W4A16 (weight-only): prefill and decode equal load_artifact's QuantLinear model tightly.

    With quantized activations the runtime's integer-product ops and the reference's fake quantization differ by
    float rounding, which flips a few 8-bit activation roundings; 30 layers amplify that to the size of the
    quantization error itself (the reference's own one-token-at-a-time and whole-sequence logits differ by
    2-4%). There the check is that the runtime is as close to the float model as the reference is."""
    name, path = artifact
    reference = load_artifact(path)[0].float()  # QuantLinear's portable forward, fp16 scales read in fp32
    runtime = load_for_inference(path, dtype=torch.float32)
    assert runtime.kernel_meta()[EXPECTED_OP[name]] == "reference"  # CPU: the portable kernels
    assert runtime.tokenizer is not None
    ids = bundled[1](PROMPT).input_ids
    steps = [553, 719]
    cache = runtime.new_cache(1, len(ids) + len(steps))
    with torch.no_grad():
        got = [runtime.prefill(torch.tensor([ids]), torch.tensor([len(ids)]), cache, all_logits=True)[0]]
        got += [runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps]
        got = torch.cat(got)
        expected = reference(torch.tensor([ids + steps])).logits[0]
        float_model = bundled[0](torch.tensor([ids + steps])).logits[0]
    if name == "w4a16-g128":
        assert relative_error(got, expected) < 1e-5
    else:
        # Measured: runtime vs float 0.16 / 0.11 (int8 / fp8), reference vs float 0.14 / 0.10.
        assert relative_error(got, float_model) < 1.5 * relative_error(expected, float_model) < 0.3


@pytest.mark.slow
def test_folded_norms_keep_the_w4a16_artifacts_accuracy(artifact, bundled) -> None:
    """The bundled model's W4A16 artifact in bf16, decoding with its norms folded into the W4A16 linears
    (norm_fold_ops; forced on the CPU, where the reference ops run them): every step's logits as close to the float
    model as the unfused runtime's are (the fold moves bf16 roundings, nothing else), and to the unfused logits within
    bf16 rounding."""
    name, path = artifact
    if name != "w4a16-g128":
        pytest.skip("the fold is for W4A16 linears")
    runtime = load_for_inference(path, dtype=torch.bfloat16)
    ids = bundled[1](PROMPT).input_ids
    steps = [553, 719, 11, 2647, 30, 1345]
    with torch.no_grad():
        float_logits = bundled[0](torch.tensor([ids + steps])).logits[0, len(ids):]

        def decode(fold: bool) -> torch.Tensor:
            runtime.fold_norms = fold
            cache = runtime.new_cache(1, len(ids) + len(steps))
            first = runtime.prefill(torch.tensor([ids]), torch.tensor([len(ids)]), cache)
            return torch.cat([first, *(runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps[:-1])]).float()

        unfused, folded = decode(False), decode(True)
    # Measured: folded vs unfused 0.014; against the float model 0.336 folded, 0.335 unfused (W4A16's own error).
    assert 0 < relative_error(folded, unfused) < 2e-2  # 0: nothing folded
    assert relative_error(folded, float_logits) < 1.1 * relative_error(unfused, float_logits)
    assert torch.equal(folded.argmax(-1), unfused.argmax(-1))


@pytest.mark.slow
def test_artifact_generates_with_a_quantized_cache(artifact, bundled) -> None:
    _, path = artifact
    runtime = load_for_inference(path, dtype=torch.float32, kv_format="int8")
    ids = bundled[1](PROMPT).input_ids
    result = Generator(runtime, max_batch=2, max_seq=32).generate([ids, ids[:4]], 4)
    assert [len(row) for row in result.tokens] == [4, 4]


@pytest.mark.slow
def test_load_for_inference_reads_the_bundled_model_and_hf_directories() -> None:
    bundled_model = load_for_inference(None, dtype=torch.float32)
    directory = load_for_inference(bundled_cache_dir(), dtype=torch.float32, kv_format="fp8")
    assert bundled_model.tokenizer is not None and directory.kv_format == "fp8"
    assert torch.equal(bundled_model.embed_weight, directory.embed_weight)
    assert bundled_model.kernel_meta() == {
        "add_rms_norm": "reference",
        "cached_attention": "reference",
        "kv_cache_write": "reference",
        "linear": "torch",
        "rms_norm": "reference",
        "rotary_embedding": "reference",
        "rotary_kv_cache_write": "reference",
        "silu_and_mul": "reference",
    }
    with pytest.raises(ValueError, match="kv_format must be one of"):
        load_for_inference(None, kv_format="int16")


def test_rocm_gpus_belong_to_the_dcu_backend(monkeypatch):
    """A ROCm build names its GPUs "cuda"; kernel selection must ask accel-hygon ("dcu"), not accel-cuda."""
    from accel.runtime.quant_backend import backend_device_type

    monkeypatch.setattr(torch.version, "hip", None)
    assert backend_device_type(torch.device("cuda")) == "cuda"
    monkeypatch.setattr(torch.version, "hip", "6.2.41133")
    assert backend_device_type(torch.device("cuda")) == "dcu"
    assert backend_device_type(torch.device("cpu")) == "cpu"
