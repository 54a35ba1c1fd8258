"""Artifacts: our loader round-trips them exactly, compressed-tensors decompresses them to our dequantized
weights exactly, tampering and pickle are refused, and writes are atomic.

Fast tests use a tiny random Llama (hidden 96: g64 leaves a partial group); the slow ones use the bundled
SmolLM2-135M (hidden 576) with every scheme the issue lists.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import safetensors.torch
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    CompressedTensorsConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

from accel.errors import ArtifactError
from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import QuantizedWeight, WeightQuantArgs, quantize
from accel.runtime import loaders
from accel.runtime.artifact import MANIFEST_NAME, WEIGHTS_NAME, ArtifactInfo, load_artifact, save_artifact
from accel.schema import AccelConfig

W4 = AccelConfig.model_validate({"quantization": {"weight_bits": 4, "method": "rtn"}})
KV8 = AccelConfig.model_validate({"quantization": {"kv_bits_prefill": 8, "kv_bits_decode": 8, "kv_type": "float"}})


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread: the tensors here are small, and on the dev machines' 2 shared cores torch's thread
    pool spinning against other processes made this module 10-30x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------------------- helpers


def act_order_quantize(weight: torch.Tensor, args: WeightQuantArgs, generator: torch.Generator) -> QuantizedWeight:
    """GPTQ act-order: groups of g consecutive columns in a random order; g_idx maps each column to its group."""
    in_features = weight.shape[1]
    perm = torch.randperm(in_features, generator=generator)
    permuted = quantize(weight[:, perm], args)
    q = torch.empty_like(permuted.q)
    q[:, perm] = permuted.q
    g_idx = torch.empty(in_features, dtype=torch.int32)
    g_idx[perm] = (torch.arange(in_features) // args.group_size).to(torch.int32)
    return QuantizedWeight(q, permuted.scale, permuted.zero_point, args, g_idx)


def quantize_linears(
    model: PreTrainedModel, args: WeightQuantArgs, act_args: ActivationQuantArgs | None = None, *,
    act_order: bool = False, skip: tuple[str, ...] = (),
) -> PreTrainedModel:
    """Replace the Linears of model.model.layers (but `skip`) with QuantLinear, scales in fp16, in place."""
    generator = torch.Generator().manual_seed(0)
    for name, linear in list(model.model.layers.named_modules()):
        if not isinstance(linear, nn.Linear) or name in skip:
            continue
        qweight = act_order_quantize(linear.weight, args, generator) if act_order else quantize(linear.weight, args)
        qweight.scale = qweight.scale.to(torch.float16)
        static = act_args is not None and not act_args.dynamic
        input_scale = (torch.rand(1, generator=generator) / 10).half() if static else None
        parent, _, child = name.rpartition(".")
        replacement = QuantLinear(qweight, linear.bias, act_args, input_scale)
        setattr(model.model.layers.get_submodule(parent), child, replacement)
    return model


def quant_linears(model: nn.Module) -> dict[str, QuantLinear]:
    return {name: module for name, module in model.named_modules() if isinstance(module, QuantLinear)}


def logits(model: PreTrainedModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


def ct_quantization_config(data: dict) -> object:
    """compressed-tensors' own validation of a quantization_config (skips when the package is missing)."""
    quantization = pytest.importorskip("compressed_tensors.quantization")
    return quantization.QuantizationConfig.model_validate(data)


def read_with_compressed_tensors(path: Path) -> dict[str, torch.Tensor]:
    """compressed-tensors' own directory reader: config.json's schemes, then each module's decompress.

    For naive/int/float formats its name matcher takes every `*.weight` outside norms as a candidate, so the
    unquantized embedding is passed as ignored (llm-compressor's own W8A8 checkpoints need the same)."""
    converters = pytest.importorskip("compressed_tensors.entrypoints.convert.converters.ct_dequantizer")
    reader = converters.CompressedTensorsDequantizer(path, ignore=["model.embed_tokens"], dtype=torch.float16)
    return reader.process(safetensors.torch.load_file(path / WEIGHTS_NAME))


def read_with_transformers(path: Path) -> PreTrainedModel:
    """transformers' compressed-tensors loader, dequantizing each weight with compressed-tensors at load."""
    pytest.importorskip("compressed_tensors")
    with warnings.catch_warnings():  # "the model already has a quantization_config": only `dequantize` is taken
        warnings.filterwarnings("ignore", message="You passed `quantization_config`")
        config = CompressedTensorsConfig(dequantize=True)
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float16, quantization_config=config)


def assert_compressed_tensors_reads_exactly(saved: PreTrainedModel, path: Path) -> None:
    """Every quantized weight decompresses to our dequantized weight bit for bit; the rest loads unchanged."""
    quantized = quant_linears(saved)
    dense = read_with_compressed_tensors(path)
    hf = read_with_transformers(path)
    hf_state = hf.state_dict()
    for name, module in quantized.items():
        ours = module.dequantized_weight(torch.float16)
        assert torch.equal(dense[f"{name}.weight"], ours), name
        assert torch.equal(hf_state[f"{name}.weight"], ours), name
    for key, tensor in saved.state_dict().items():
        if key.rpartition(".")[0] not in quantized:
            assert torch.equal(hf_state[key], tensor), key


def assert_round_trip(saved: PreTrainedModel, loaded: PreTrainedModel, ids: torch.Tensor) -> None:
    """The loader rebuilt every QuantLinear with the saved codes, scales, zero points and g_idx, and the rest."""
    before, after = quant_linears(saved), quant_linears(loaded)
    assert before.keys() == after.keys()
    for name, module in before.items():
        other = after[name]
        assert (other.weight_args, other.act_args) == (module.weight_args, module.act_args), name
        assert torch.equal(other.weight_q, module.weight_q), name
        assert torch.equal(other.weight_scale, module.weight_scale), name
        for attr in ("weight_zero_point", "weight_g_idx", "input_scale", "bias"):
            mine, theirs = getattr(module, attr), getattr(other, attr)
            assert (mine is None and theirs is None) or torch.equal(mine, theirs), (name, attr)
        assert torch.equal(other.dequantized_weight(torch.float16), module.dequantized_weight(torch.float16))
    state = loaded.state_dict()
    for key, tensor in saved.state_dict().items():
        assert torch.equal(state[key], tensor), key
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert not loaded.training
    assert torch.equal(logits(loaded, ids), logits(saved, ids))


# ------------------------------------------------------------------------------------- tiny model (fast)


@pytest.fixture(scope="module")
def tiny() -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A 2-layer Llama with hidden 96 and intermediate 160 (so g64 leaves partial groups), tied embeddings."""
    vocab = {word: index for index, word in enumerate(["[UNK]", "[EOS]", *(f"w{i}" for i in range(62))])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="[EOS]")
    config = LlamaConfig(
        vocab_size=64, hidden_size=96, intermediate_size=160, num_hidden_layers=2, num_attention_heads=3,
        num_key_value_heads=1, max_position_embeddings=64, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval(), tokenizer


def tiny_quantized(
    tiny, args: WeightQuantArgs, act_args: ActivationQuantArgs | None = None, **kwargs
) -> PreTrainedModel:
    return quantize_linears(copy.deepcopy(tiny[0]), args, act_args, **kwargs)


STATIC_INT8 = ActivationQuantArgs(strategy="tensor", dynamic=False)
TINY_IDS = torch.tensor([[2, 7, 11, 5, 3]])

TINY_SCHEMES = {
    "int4-g64-partial": (WeightQuantArgs(4, True, "group", 64), None),
    "int3-asym-g32": (WeightQuantArgs(3, False, "group", 32), None),
    "int2-asym-channel": (WeightQuantArgs(2, False, "channel", -1), None),
    "int8-asym-tensor": (WeightQuantArgs(8, False, "tensor", -1), None),
    "fp8-tensor-weight-only": (WeightQuantArgs(8, True, "tensor", -1, "float"), None),
    "int8-asym-static-acts": (WeightQuantArgs(8, False, "channel", -1), STATIC_INT8),
}


@pytest.mark.parametrize("scheme", TINY_SCHEMES)
def test_tiny_layouts_round_trip_and_decompress_exactly(tiny, tmp_path: Path, scheme: str) -> None:
    model = tiny_quantized(tiny, *TINY_SCHEMES[scheme])
    save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny")
    loaded, _, _ = load_artifact(tmp_path / "a")
    assert_round_trip(model, loaded, TINY_IDS)
    assert_compressed_tensors_reads_exactly(model, tmp_path / "a")


def test_partial_groups_are_stored_whole(tiny, tmp_path: Path) -> None:
    # g64 on inputs of 96 and 160: stored with g_s = gcd(64, 96, 160) = 32, every scale repeated twice.
    model = tiny_quantized(tiny, WeightQuantArgs(4, False, "group", 64))
    save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny")
    quant = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    (group,) = quant["config_groups"].values()
    assert group["targets"] == ["Linear"] and quant["ignore"] == ["lm_head"]
    assert group["weights"]["group_size"] == 32 and quant["format"] == "pack-quantized"
    tensors = safetensors.torch.load_file(tmp_path / "a" / WEIGHTS_NAME)
    down = model.model.layers[0].mlp.down_proj  # in 160: 3 logical groups (64, 64, 32) -> 5 stored
    assert down.weight_scale.shape == (96, 3)
    stored = tensors["model.layers.0.mlp.down_proj.weight_scale"]
    assert torch.equal(stored, down.weight_scale.repeat_interleave(2, dim=1)[:, :5])
    assert tensors["model.layers.0.mlp.down_proj.weight_zero_point"].shape == (96 * 4 // 32, 5)
    manifest = json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())
    record = manifest["layers"]["model.layers.0.mlp.down_proj"]
    assert (record["weights"]["group_size"], record["storage_group_size"]) == (64, 32)


def test_mixed_precision_names_its_layers(tiny, tmp_path: Path) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(4, True, "group", 32), skip=("0.mlp.down_proj",))
    w8 = quantize(model.model.layers[0].mlp.down_proj.weight, WeightQuantArgs(8, True, "channel", -1))
    w8.scale = w8.scale.half()
    model.model.layers[0].mlp.down_proj = QuantLinear(w8)
    save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny")
    quant = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    ct_quantization_config(quant)
    first, second = quant["config_groups"].values()
    assert second["targets"] == ["model.layers.0.mlp.down_proj"] and len(first["targets"]) == 13
    assert (first["weights"]["num_bits"], second["weights"]["num_bits"]) == (4, 8)
    loaded, _, _ = load_artifact(tmp_path / "a")
    assert_round_trip(model, loaded, TINY_IDS)
    dense = read_with_compressed_tensors(tmp_path / "a")  # transformers' dequantize path reads one scheme only
    for name, module in quant_linears(model).items():
        assert torch.equal(dense[f"{name}.weight"], module.dequantized_weight(torch.float16)), name


def test_manifest_records_profile_versions_choices_and_hashes(tiny, tmp_path: Path) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(4, True, "group", 32))
    choices = {"model.layers.0.mlp.down_proj": {"method": "rtn", "bits": 4}}
    kernels = {"cuda": {"model.layers.0.mlp.down_proj": "marlin"}}
    info = save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny-llama", layer_choices=choices,
                         kernel_meta=kernels)
    root = tmp_path / "a"
    assert isinstance(info, ArtifactInfo) and info.path == root.absolute()
    on_disk = {path.name: path.stat().st_size for path in root.iterdir()}
    assert info.files == on_disk and info.total_bytes == sum(on_disk.values())
    assert {"config.json", WEIGHTS_NAME, "tokenizer.json", "generation_config.json", MANIFEST_NAME} <= set(on_disk)
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    assert manifest["schema_version"] == 1 and manifest["format"] == "compressed-tensors"
    assert AccelConfig.model_validate(manifest["accel_config"]) == W4
    expected = {"accel", "torch", "transformers", "safetensors", "python"}
    if importlib.util.find_spec("compressed_tensors") is not None:
        expected.add("compressed-tensors")
    assert expected <= set(manifest["versions"])
    assert (manifest["source"], manifest["layer_choices"], manifest["kernel_meta"]) == ("tiny-llama", choices, kernels)
    assert manifest["dtype"] == "float16" and len(manifest["layers"]) == 14
    assert set(manifest["files"]) == set(on_disk) - {MANIFEST_NAME}
    for name, entry in manifest["files"].items():
        data = (root / name).read_bytes()
        assert entry == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    assert loaders.load_artifact is load_artifact


def test_kv_scales_in_config_tensors_and_back(tiny, tmp_path: Path) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(8, True, "channel", -1, "float"), ActivationQuantArgs(type="float"))
    kv = {f"model.layers.{i}.self_attn": (torch.tensor(0.5 + i), torch.tensor([0.25 + i])) for i in range(2)}
    one = torch.ones(1)
    save_artifact(model, tiny[1], tmp_path / "a", KV8, source="tiny", kv_scales=kv)
    quant = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]
    assert quant["kv_cache_scheme"] == {
        "num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "group_size": None, "dynamic": False,
    }
    assert quant["format"] == "float-quantized"
    ct_quantization_config(quant)
    tensors = safetensors.torch.load_file(tmp_path / "a" / WEIGHTS_NAME)
    assert tensors["model.layers.1.self_attn.k_scale"].tolist() == [1.5]
    assert tensors["model.layers.1.self_attn.v_scale"].tolist() == [1.25]
    assert tensors["model.layers.1.self_attn.v_scale"].dtype == torch.float16
    loaded, tokenizer, manifest = load_artifact(tmp_path / "a")
    assert manifest["kv_cache"] == {"num_bits": 8, "type": "float", "modules": sorted(kv)}
    assert loaded.model.layers[0].self_attn.k_scale.tolist() == [0.5]
    # A loaded artifact saves back to the same tensors, KV scales included, byte for byte.
    save_artifact(loaded, tokenizer, tmp_path / "b", KV8, source="tiny")
    assert (tmp_path / "a" / WEIGHTS_NAME).read_bytes() == (tmp_path / "b" / WEIGHTS_NAME).read_bytes()
    with pytest.raises(ArtifactError, match="KV cache is 16-bit"):
        save_artifact(model, tiny[1], tmp_path / "c", W4, source="tiny", kv_scales=kv)
    with pytest.raises(ArtifactError, match="not a module"):
        save_artifact(model, tiny[1], tmp_path / "c", KV8, source="tiny", kv_scales={"model.nope": (one, one)})


def test_act_order_needs_balanced_groups_and_identity_order_is_dropped(tiny, tmp_path: Path) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(4, True, "group", 32))
    layer = model.model.layers[0].mlp.down_proj
    layer.weight_g_idx = torch.arange(160, dtype=torch.int32) // 32  # column order: nothing to record
    save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny")
    (group,) = json.loads((tmp_path / "a" / "config.json").read_text())["quantization_config"]["config_groups"].values()
    assert "actorder" not in group["weights"]
    layer.weight_g_idx = torch.zeros(160, dtype=torch.int32)  # every column in group 0
    with pytest.raises(ArtifactError, match="model.layers.0.mlp.down_proj: weight_g_idx"):
        save_artifact(model, tiny[1], tmp_path / "b", W4, source="tiny")


def test_quantized_lm_head_unties_embeddings(tiny, tmp_path: Path) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(8, True, "channel", -1))
    qweight = quantize(model.lm_head.weight, WeightQuantArgs(8, True, "channel", -1))
    qweight.scale = qweight.scale.half()
    model.lm_head = QuantLinear(qweight)
    save_artifact(model, tiny[1], tmp_path / "a", W4, source="tiny")
    assert json.loads((tmp_path / "a" / "config.json").read_text())["tie_word_embeddings"] is False
    loaded, _, _ = load_artifact(tmp_path / "a")
    assert isinstance(loaded.lm_head, QuantLinear)
    assert torch.equal(logits(loaded, TINY_IDS), logits(model, TINY_IDS))


@pytest.fixture
def artifact_dir(tiny, tmp_path: Path) -> Path:
    save_artifact(tiny_quantized(tiny, WeightQuantArgs(4, True, "group", 32)), tiny[1], tmp_path / "a", W4,
                  source="tiny")
    return tmp_path / "a"


def test_flipped_byte_is_refused(artifact_dir: Path) -> None:
    weights = artifact_dir / WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"model.safetensors does not match its sha256.*re-export"):
        load_artifact(artifact_dir)


def test_truncated_file_is_refused(artifact_dir: Path) -> None:
    weights = artifact_dir / WEIGHTS_NAME
    size = weights.stat().st_size
    with weights.open("r+b") as handle:
        handle.truncate(size - 100)
    with pytest.raises(ArtifactError, match=rf"model.safetensors is {size - 100} bytes .* says {size} \(truncated"):
        load_artifact(artifact_dir)


def test_pickle_and_unlisted_weights_are_refused(artifact_dir: Path) -> None:
    stray = artifact_dir / "pytorch_model.bin"
    torch.save({"x": torch.zeros(1)}, stray)
    with pytest.raises(ArtifactError, match=r"pytorch_model.bin.*safetensors only"):
        load_artifact(artifact_dir)
    stray.unlink()
    safetensors.torch.save_file({"x": torch.zeros(1)}, str(artifact_dir / "extra.safetensors"))
    with pytest.raises(ArtifactError, match=r"not in the manifest: \['extra.safetensors'\]"):
        load_artifact(artifact_dir)


def test_missing_manifest_or_file_is_refused(artifact_dir: Path) -> None:
    (artifact_dir / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="tokenizer.json, listed in the manifest, is missing"):
        load_artifact(artifact_dir)
    (artifact_dir / MANIFEST_NAME).unlink()
    with pytest.raises(ArtifactError, match=f"no {MANIFEST_NAME}"):
        load_artifact(artifact_dir)


def test_failed_write_leaves_nothing_behind(tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_write(tensors: dict, filename: str, metadata: dict | None = None) -> None:
        Path(filename).write_bytes(b"partial")
        raise RuntimeError("disk full")

    model = tiny_quantized(tiny, WeightQuantArgs(4, True, "group", 32))
    parent = tmp_path / "out"
    parent.mkdir()
    monkeypatch.setattr(safetensors.torch, "save_file", half_write)
    with pytest.raises(RuntimeError, match="disk full"):
        save_artifact(model, tiny[1], parent / "a", W4, source="tiny")
    assert list(parent.iterdir()) == []


def test_overwrite_is_explicit_and_safe(tiny, artifact_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_quantized(tiny, WeightQuantArgs(8, True, "channel", -1))
    with pytest.raises(ArtifactError, match="already exists; pass overwrite=True"):
        save_artifact(model, tiny[1], artifact_dir, W4, source="new")
    original = (artifact_dir / MANIFEST_NAME).read_text()
    monkeypatch.setattr(safetensors.torch, "save_file", lambda *args, **kwargs: (_ for _ in ()).throw(OSError("boom")))
    with pytest.raises(OSError, match="boom"):
        save_artifact(model, tiny[1], artifact_dir, W4, source="new", overwrite=True)
    monkeypatch.undo()
    assert (artifact_dir / MANIFEST_NAME).read_text() == original
    assert sorted(path.name for path in artifact_dir.parent.iterdir()) == ["a"]
    save_artifact(model, tiny[1], artifact_dir, W4, source="new", overwrite=True)
    assert load_artifact(artifact_dir)[2]["source"] == "new"
    assert sorted(path.name for path in artifact_dir.parent.iterdir()) == ["a"]
    precious = artifact_dir.parent / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not an accel artifact; refusing to replace it"):
        save_artifact(model, tiny[1], precious, W4, source="new", overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"


# --------------------------------------------------------------------------------- bundled model (slow)


@dataclass
class Case:
    name: str
    model: PreTrainedModel
    path: Path
    info: ArtifactInfo


STATIC_FP8 = ActivationQuantArgs(type="float", strategy="tensor", dynamic=False)
SCHEMES: dict[str, tuple[WeightQuantArgs, ActivationQuantArgs | None, bool, str]] = {
    # name: (weights, activations, act-order, compressed-tensors format)
    "w4a16-g128": (WeightQuantArgs(4, True, "group", 128), None, False, "pack-quantized"),
    "w4a16-asym-g64": (WeightQuantArgs(4, False, "group", 64), None, False, "pack-quantized"),
    "w8a16-channel": (WeightQuantArgs(8, True, "channel", -1), None, False, "pack-quantized"),
    "w8a8-int8": (WeightQuantArgs(8, True, "channel", -1), ActivationQuantArgs(), False, "int-quantized"),
    "w8a8-fp8": (WeightQuantArgs(8, True, "channel", -1, "float"), STATIC_FP8, False, "float-quantized"),
    "w4a16-g128-act-order": (WeightQuantArgs(4, True, "group", 128), None, True, "pack-quantized"),
}


@pytest.fixture(scope="module")
def bundled() -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    return loaders.load_model(dtype=torch.float16)


@pytest.fixture(scope="module")
def prompt(bundled) -> torch.Tensor:
    return bundled[1]("The capital of France is", return_tensors="pt").input_ids


@pytest.fixture(scope="module", params=list(SCHEMES))
def case(request: pytest.FixtureRequest, bundled, tmp_path_factory: pytest.TempPathFactory) -> Case:
    weights, acts, act_order, _ = SCHEMES[request.param]
    model = quantize_linears(copy.deepcopy(bundled[0]), weights, acts, act_order=act_order)
    path = tmp_path_factory.mktemp(request.param) / "artifact"
    info = save_artifact(model, bundled[1], path, W4, source="bundled")
    return Case(request.param, model, path, info)


@pytest.mark.slow
def test_bundled_round_trip(case: Case, prompt: torch.Tensor) -> None:
    loaded, tokenizer, manifest = load_artifact(case.path)
    assert len(manifest["layers"]) == 210
    assert tokenizer("Hello world")["input_ids"] == [19556, 905]
    assert_round_trip(case.model, loaded, prompt)


@pytest.mark.slow
def test_bundled_compressed_tensors_reads_exactly(case: Case) -> None:
    quant = json.loads((case.path / "config.json").read_text())["quantization_config"]
    (group,) = quant["config_groups"].values()
    assert (quant["format"], group["targets"], quant["ignore"]) == (SCHEMES[case.name][3], ["Linear"], ["lm_head"])
    if SCHEMES[case.name][2]:
        assert group["weights"]["actorder"] == "group"
        try:
            ct_quantization_config(quant)
        except ValueError as exc:
            # compressed-tensors >= 0.19 removed act-order with g_idx: this artifact needs a <= 0.18 reader.
            assert "actorder='group' has been removed" in str(exc)
            return
        dense = read_with_compressed_tensors(case.path)  # transformers' dequantize path ignores g_idx
        for name, module in quant_linears(case.model).items():
            assert torch.equal(dense[f"{name}.weight"], module.dequantized_weight(torch.float16)), name
        return
    ct_quantization_config(quant)
    assert_compressed_tensors_reads_exactly(case.model, case.path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["w4a16-g128"], indirect=True)
def test_bundled_w4a16_is_under_half_of_fp16(case: Case, bundled, tmp_path: Path) -> None:
    baseline = save_artifact(bundled[0], bundled[1], tmp_path / "fp16", AccelConfig(), source="bundled")
    assert "quantization_config" not in json.loads((tmp_path / "fp16" / "config.json").read_text())
    w4, fp16 = case.info.total_bytes / 1e6, baseline.total_bytes / 1e6
    print(f"\nbundled artifact: W4A16 g128 {w4:.1f} MB, fp16 {fp16:.1f} MB")
    assert case.info.total_bytes < 0.5 * baseline.total_bytes
