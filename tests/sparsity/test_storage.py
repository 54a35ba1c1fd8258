"""The compact sparse forms: bit layouts, round trips through real artifacts, and refusals of masks that break
their declared pattern."""

import hashlib
import json

import numpy as np
import pytest
import safetensors.torch
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.errors import ArtifactError
from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.quantization.pipeline import quantize_model
from accel.runtime.artifact import MANIFEST_NAME, WEIGHTS_NAME, load_artifact, save_artifact
from accel.schema import AccelConfig, QuantizationProfile, SparsityConfig
from accel.sparsity.pipeline import prune_model
from accel.sparsity.storage import (
    SPARSE_FILE,
    StoredLayer,
    check_layer,
    decode_mask,
    encode_layer,
    read_sparse_layers,
)
from accel.sparsity.structured import block_mask, nm_mask
from accel.sparsity.unstructured import unstructured_mask


def float_layer(weight: torch.Tensor) -> StoredLayer:
    return StoredLayer(weight, weight.float())


def test_bitmask_is_numpy_packbits_little_endian():
    mask = torch.zeros(2, 12, dtype=torch.bool)
    mask[0, 0] = mask[0, 9] = mask[1, 7] = mask[1, 11] = True
    tensors, record = encode_layer("m", "unstructured", (16, 16), mask, float_layer(torch.randn(2, 12) * mask))
    bits = tensors["m.weight_bitmask"]
    assert bits.dtype == torch.uint8 and bits.tolist() == [[0b00000001, 0b00000010], [0b10000000, 0b00001000]]
    np.testing.assert_array_equal(bits.numpy(), np.packbits(mask.numpy(), axis=1, bitorder="little"))
    assert record == {"pattern": "unstructured", "layout": "bitmask", "shape": [2, 12], "kept": 4}
    assert torch.equal(decode_mask("m", record, tensors), mask)


def test_nm_indices_are_2_bit_little_endian_and_values_in_order():
    weight = torch.tensor([[5.0, 0, 0, 7.0, 0, 6.0, 8.0, 0]])
    mask = weight != 0
    tensors, record = encode_layer("m", "2:4", (16, 16), mask, float_layer(weight))
    # groups (0, 3) and (1, 2): index v at bits [2v, 2v + 2): 0 | 3 << 2 | 1 << 4 | 2 << 6
    assert tensors["m.weight_nm_indices"].tolist() == [[0 | 3 << 2 | 1 << 4 | 2 << 6]]
    assert tensors["m.weight_nm_values"].tolist() == [[5.0, 7.0, 6.0, 8.0]]
    assert record["index_bits"] == 2 and record["kept"] == 4
    assert torch.equal(decode_mask("m", record, tensors), mask)


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4", "unstructured", "block"])
def test_encode_decode_round_trip(pattern):
    scores = torch.rand(24, 64, generator=torch.Generator().manual_seed(0))
    masks = {"2:4": nm_mask(scores, 2, 4), "4:8": nm_mask(scores, 4, 8), "1:4": nm_mask(scores, 1, 4),
             "unstructured": unstructured_mask(scores, 0.6), "block": block_mask(scores, 0.5, (8, 16))}
    mask = masks[pattern]
    layer = float_layer(torch.randn(24, 64) * mask)
    tensors, record = encode_layer("m", pattern, (8, 16), mask, layer)
    decoded = decode_mask("m", record, tensors)
    assert torch.equal(decoded, mask)
    check_layer("m", record, decoded, layer, tensors)
    if pattern == "4:8":
        assert record["index_bits"] == 3 and tensors["m.weight_nm_indices"].shape == (24, 64 // 8 * 4 * 3 // 8)
    if pattern == "block":
        assert tensors["m.weight_blocks"].shape == (int(mask.sum()) // (8 * 16), 2)


def test_nm_that_does_not_divide_the_input_uses_the_bitmask_and_is_still_checked():
    mask = nm_mask(torch.rand(4, 10), 2, 4)  # a partial last group
    _, record = encode_layer("m", "2:4", (16, 16), mask, float_layer(torch.randn(4, 10) * mask))
    assert record["layout"] == "bitmask"
    broken = mask.clone()
    broken[0, :3] = True
    bad = {"m.weight_bitmask": torch.from_numpy(np.packbits(broken.numpy(), axis=1, bitorder="little"))}
    with pytest.raises(ArtifactError, match=r"m\.weight_bitmask: the mask is not 2:4 as declared: .*row 0"):
        check_layer("m", record, decode_mask("m", record, bad), float_layer(torch.randn(4, 10) * broken), bad)


def test_malformed_forms_are_refused():
    mask = nm_mask(torch.rand(2, 8), 2, 4)
    tensors, record = encode_layer("m", "2:4", (16, 16), mask, float_layer(torch.randn(2, 8) * mask))
    duplicated = dict(tensors, **{"m.weight_nm_indices": torch.tensor([[0b01010101], [0b11100100]],
                                                                      dtype=torch.uint8)})
    with pytest.raises(ArtifactError, match=r"m\.weight_nm_indices: the mask is not 2:4: .*strictly ascending"):
        decode_mask("m", record, duplicated)
    bitmask_record = {"pattern": "unstructured", "layout": "bitmask", "shape": [1, 4], "kept": 1}
    with pytest.raises(ArtifactError, match="padding bits"):
        decode_mask("m", bitmask_record, {"m.weight_bitmask": torch.tensor([[0b00010001]], dtype=torch.uint8)})
    block_record = {"pattern": "block", "layout": "blocks", "shape": [16, 16], "block_shape": [8, 8], "kept": 128}
    with pytest.raises(ArtifactError, match="outside the 2x2 grid"):
        decode_mask("m", block_record, {"m.weight_blocks": torch.tensor([[0, 2]], dtype=torch.int32)})
    with pytest.raises(ArtifactError, match="row-major"):
        decode_mask("m", block_record, {"m.weight_blocks": torch.tensor([[1, 0], [0, 1]], dtype=torch.int32)})


# ------------------------------------------------------------------------------------------------- artifacts



@pytest.fixture(scope="module")
def tokenizer():
    from accel.runtime.loaders import load_model

    return load_model()[1]


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(config).eval()


def pruned(tiny, pattern: str, quantize: bool = False):
    registry = load_registry(PluginPolicy())
    sparsity = SparsityConfig(pattern=pattern, block_shape=(8, 8),
                              **({} if ":" in pattern else {"ratio": 0.5}))
    result = prune_model(tiny, None, sparsity, registry, progress=False)
    profile = QuantizationProfile()
    if quantize:
        profile = QuantizationProfile(weight_bits=4, group_size=32, symmetric=False, method="rtn",
                                      sparsity_pattern=pattern, sparsity_ratio=sparsity.ratio)
        quantize_model(tiny, None, profile, registry, progress=False)
    return AccelConfig(quantization=profile, sparsity=sparsity), result.masks


def rewrite_manifest(root) -> None:
    """Re-sign every file after tampering, so only the sparse checks can catch it."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    for name, entry in manifest["files"].items():
        data = (root / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.slow
@pytest.mark.parametrize("quantize", [False, True], ids=["fp16", "w4-asym"])
@pytest.mark.parametrize("pattern", ["2:4", "4:8", "unstructured", "block"])
def test_artifact_round_trip(tiny, tokenizer, tmp_path, pattern, quantize):
    config, masks = pruned(tiny, pattern, quantize)
    save_artifact(tiny, tokenizer, tmp_path / "a", config, source="tiny", sparse_masks=masks)
    model, _, manifest = load_artifact(tmp_path / "a")
    assert manifest["files"][SPARSE_FILE]["bytes"] > 0 and manifest["sparsity"]["pattern"] == pattern
    loaded = read_sparse_layers(tmp_path / "a", manifest, model)
    assert loaded.keys() == masks.keys()
    for name, mask in masks.items():
        assert torch.equal(loaded[name], mask), name
        module = model.get_submodule(name)
        dense = module.dequantized_weight(torch.float32) if quantize else module.weight
        assert (dense[~mask] == 0).all()  # the dense-with-zeros weights, loadable anywhere
    if quantize and ":" in pattern:
        record = manifest["sparsity"]["layers"]["model.layers.0.mlp.down_proj"]
        assert record["values"] == "packed codes" and record["num_bits"] == 4


@pytest.mark.slow
def test_writer_refuses_masks_off_the_pattern_or_dropping_nonzero_weights(tiny, tokenizer, tmp_path):
    config, masks = pruned(tiny, "2:4")
    name = "model.layers.0.mlp.up_proj"
    broken = dict(masks, **{name: masks[name].clone()})
    broken[name][0, :4] = True
    with pytest.raises(ArtifactError, match=rf"{name}: the mask is not 2:4 as declared: .*row 0, columns 0..3"):
        save_artifact(tiny, tokenizer, tmp_path / "a", config, source="tiny", sparse_masks=broken)
    dense = dict(masks, **{name: ~masks[name]})
    with pytest.raises(ArtifactError, match=rf"{name}: \d+ weights the 2:4 mask drops are not zero"):
        save_artifact(tiny, tokenizer, tmp_path / "a", config, source="tiny", sparse_masks=dense)
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_loader_refuses_a_tampered_mask_or_dense_weight(tiny, tokenizer, tmp_path):
    config, masks = pruned(tiny, "2:4")
    save_artifact(tiny, tokenizer, tmp_path / "a", config, source="tiny", sparse_masks=masks)
    name = "model.layers.1.self_attn.o_proj"
    compact = safetensors.torch.load_file(tmp_path / "a" / SPARSE_FILE)
    shifted = compact[f"{name}.weight_nm_indices"].clone()
    shifted[0, 0] = 0  # group 0 of row 0 now says positions (0, 0)
    safetensors.torch.save_file({**compact, f"{name}.weight_nm_indices": shifted}, tmp_path / "a" / SPARSE_FILE)
    rewrite_manifest(tmp_path / "a")
    with pytest.raises(ArtifactError, match=rf"{name}\.weight_nm_indices: the mask is not 2:4"):
        load_artifact(tmp_path / "a")

    save_artifact(tiny, tokenizer, tmp_path / "b", config, source="tiny", sparse_masks=masks)
    weights = safetensors.torch.load_file(tmp_path / "b" / WEIGHTS_NAME)
    weight = weights[f"{name}.weight"]
    weight[~masks[name]] = 1.0
    safetensors.torch.save_file(weights, tmp_path / "b" / WEIGHTS_NAME)
    rewrite_manifest(tmp_path / "b")
    with pytest.raises(ArtifactError, match=rf"{name}\.weight_nm_indices: \d+ weights the 2:4 mask drops are not zero"):
        load_artifact(tmp_path / "b")
