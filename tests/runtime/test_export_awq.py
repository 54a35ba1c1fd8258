"""AutoAWQ GEMM export: an independent reading of AutoAWQ's layout recovers our codes, zero points and scales
(hence our dequantized weight); compressed-tensors' AutoAWQ converter agrees; unfit layers are refused."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import ArtifactError
from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import WeightQuantArgs, quantize
from accel.runtime.artifact import WEIGHTS_NAME, load_artifact, verify_artifact
from accel.runtime.export_awq import export_autoawq
from accel.runtime.loaders import load_model
from accel.schema import AccelConfig

pytestmark = pytest.mark.slow

W4 = AccelConfig.model_validate({"quantization": {"weight_bits": 4, "method": "awq", "group_size": 64,
                                                  "symmetric": False}})
# AutoAWQ's WQLinear_GEMM.from_linear: nibble i (bits 4i..4i+3) of an int32 holds column 8c + ORDER[i].
AUTOAWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def read_autoawq(packed: torch.Tensor) -> torch.Tensor:
    """AutoAWQ GEMM int32 [rows, cols/8] -> unsigned 4-bit values [rows, cols], one nibble position at a time."""
    words = packed.to(torch.int64) & 0xFFFFFFFF
    values = torch.empty(packed.shape[0], packed.shape[1] * 8, dtype=torch.int64)
    for position, column in enumerate(AUTOAWQ_ORDER):
        values[:, column::8] = (words >> (4 * position)) & 0xF
    return values


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: on the dev machines' 2 shared cores torch's thread pool spins against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def bundled() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_model(dtype=torch.float16)


def with_quantized(
    base: PreTrainedModel, args: WeightQuantArgs, act_args: ActivationQuantArgs | None = None, *,
    only: str | None = None,
) -> PreTrainedModel:
    """A copy of `base` whose Linears in model.model.layers (or just `only`) are QuantLinear with fp16 scales."""
    model = copy.deepcopy(base)
    for name, linear in list(model.model.layers.named_modules()):
        if isinstance(linear, nn.Linear) and only in (None, name):
            qweight = quantize(linear.weight, args)
            qweight.scale = qweight.scale.to(torch.float16)
            parent, _, child = name.rpartition(".")
            setattr(model.model.layers.get_submodule(parent), child, QuantLinear(qweight, linear.bias, act_args))
    return model


def test_autoawq_layout_holds_our_codes_zeros_and_scales(bundled, tmp_path: Path) -> None:
    model = with_quantized(bundled[0], WeightQuantArgs(4, False, "group", 64))
    export_autoawq(model, bundled[1], tmp_path / "awq", W4, source="bundled", kernel_meta={"cuda": "awq-gemm"})
    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    assert config["quantization_config"] == {
        "quant_method": "awq", "bits": 4, "group_size": 64, "zero_point": True, "version": "gemm",
        "modules_to_not_convert": ["lm_head"],
    }
    assert config["tie_word_embeddings"] is True
    manifest = verify_artifact(tmp_path / "awq")
    assert manifest["format"] == "autoawq-gemm" and manifest["kernel_meta"] == {"cuda": "awq-gemm"}
    tensors = safetensors.torch.load_file(tmp_path / "awq" / WEIGHTS_NAME)
    assert "lm_head.weight" not in tensors and tensors["model.embed_tokens.weight"].dtype == torch.float16
    quantized = {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}
    assert len(quantized) == 210
    for name, module in quantized.items():
        qweight, qzeros, scales = (tensors[f"{name}.{key}"] for key in ("qweight", "qzeros", "scales"))
        groups = module.in_features // 64
        assert qweight.dtype == qzeros.dtype == torch.int32 and scales.dtype == torch.float16
        assert qweight.shape == (module.in_features, module.out_features // 8)
        assert qzeros.shape == (groups, module.out_features // 8) and scales.shape == (groups, module.out_features)
        codes, zeros = read_autoawq(qweight), read_autoawq(qzeros)
        assert torch.equal(codes.T - 8, module.weight_q.long()), name
        assert torch.equal(zeros.T - 8, module.weight_zero_point.long()), name
        assert torch.equal(scales.T, module.weight_scale), name
        # AutoAWQ dequantizes w = (q - z) * s per group of 64 input rows.
        dequantized = (codes - zeros.repeat_interleave(64, dim=0)).half() * scales.repeat_interleave(64, dim=0)
        assert torch.equal(dequantized.T, module.dequantized_weight(torch.float16)), name
    with pytest.raises(ArtifactError, match="'autoawq-gemm' export for other engines"):
        load_artifact(tmp_path / "awq")


def test_compressed_tensors_autoawq_converter_agrees(bundled, tmp_path: Path) -> None:
    """A second, third-party reader of the AutoAWQ layout: compressed-tensors' converter, then its decompressor."""
    converter_module = pytest.importorskip("compressed_tensors.entrypoints.convert.converters.autoawq")
    from compressed_tensors.compressors.pack_quantized import PackedQuantizationCompressor

    layer = "model.layers.3.mlp.down_proj"
    model = with_quantized(bundled[0], WeightQuantArgs(4, False, "group", 64), only="3.mlp.down_proj")
    export_autoawq(model, bundled[1], tmp_path / "awq", W4, source="bundled")
    config = json.loads((tmp_path / "awq" / "config.json").read_text())["quantization_config"]
    assert len(config["modules_to_not_convert"]) == 210 and layer not in config["modules_to_not_convert"]
    converter = converter_module.AutoAWQConverter.from_autoawq_config(config)
    tensors = safetensors.torch.load_file(tmp_path / "awq" / WEIGHTS_NAME)
    converted = converter.process({key: value for key, value in tensors.items() if key.startswith(layer + ".")})
    (scheme,) = converter.update_config(None).config_groups.values()
    state = {key.removeprefix(layer + "."): value for key, value in converted.items()}
    weight = PackedQuantizationCompressor.decompress(state, scheme)["weight"]
    assert torch.equal(weight, model.get_submodule(layer).dequantized_weight(torch.float16))


def test_unfit_layers_are_refused_by_name(bundled, tmp_path: Path) -> None:
    q_proj = "model.layers.0.self_attn.q_proj"
    cases = [
        (WeightQuantArgs(4, False, "group", 128), None,
         rf"{q_proj}: group_size 128 does not divide in_features 576.*group_size 64 or 32"),
        (WeightQuantArgs(4, True, "group", 64), None, rf"{q_proj}: AutoAWQ GEMM stores zero points"),
        (WeightQuantArgs(8, False, "group", 64), None, rf"{q_proj}: AutoAWQ holds 4-bit integer weights"),
        (WeightQuantArgs(4, False, "channel", -1), None, rf"{q_proj}: AutoAWQ needs group-wise scales"),
        (WeightQuantArgs(4, False, "group", 64), ActivationQuantArgs(), rf"{q_proj}: AutoAWQ is weight-only"),
    ]
    for args, act_args, message in cases:
        model = with_quantized(bundled[0], args, act_args, only="0.self_attn.q_proj")
        with pytest.raises(ArtifactError, match=message):
            export_autoawq(model, bundled[1], tmp_path / "awq", W4, source="bundled")
    model = with_quantized(bundled[0], WeightQuantArgs(4, False, "group", 64), only="0.self_attn.q_proj")
    model.get_submodule(q_proj).weight_g_idx = torch.randperm(576) // 64
    with pytest.raises(ArtifactError, match=rf"{q_proj}: AutoAWQ has no act-order"):
        export_autoawq(model, bundled[1], tmp_path / "awq", W4, source="bundled")
    assert not (tmp_path / "awq").exists()
