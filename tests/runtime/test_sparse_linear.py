"""The runtime's 2:4 path: a 2:4-pruned W4 artifact loads with its masks, and where a backend has a 2:4 kernel for
the device, decode steps go through it (prefill through the dense weights) with the same logits as the dense path.

The backend here is a real plugin registered the way a third party's would be: it serves core's reference
`w4a16_sparse24_linear` on the CPU, so the whole selection, load-time preparation and dispatch run."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.plugins import KernelBackendSpec, load_registry
from accel.plugins.backend import BackendPlugin
from accel.plugins.loader import PluginPolicy
from accel.quantization.pipeline import quantize_model
from accel.runtime.artifact import load_artifact, save_artifact
from accel.runtime.ops import OPS
from accel.runtime.quant_backend import W4A16Linear, W4A16Sparse24Linear, load_for_inference
from accel.schema import AccelConfig, CapabilityDescriptor, QuantizationProfile, SparsityConfig
from accel.sparsity.pipeline import prune_model

pytestmark = pytest.mark.slow  # loads the bundled tokenizer


def cpu_sparse_backend() -> BackendPlugin:
    return BackendPlugin(
        KernelBackendSpec(
            name="cpu-sparse24",
            description="core's 2:4 reference served as a backend kernel on the CPU (test plugin)",
            device_type="cpu",
            is_available=lambda: True,
            capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"),
            kernels=lambda: {"w4a16_sparse24_linear": OPS["w4a16_sparse24_linear"].reference},
            priority=1,
        )
    )


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    from accel.runtime.loaders import load_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(config).eval()
    registry = load_registry(PluginPolicy())
    sparsity = SparsityConfig(pattern="2:4")
    masks = prune_model(model, None, sparsity, registry, progress=False).masks
    profile = QuantizationProfile(weight_bits=4, group_size=128, symmetric=False, method="rtn",
                                  sparsity_pattern="2:4")
    quantize_model(model, None, profile, registry, progress=False)
    root = tmp_path_factory.mktemp("sparse") / "a"
    save_artifact(model, load_model()[1], root, AccelConfig(quantization=profile, sparsity=sparsity), source="tiny",
                  sparse_masks=masks)
    return root, masks


def test_loaded_modules_keep_their_masks(artifact):
    root, masks = artifact
    model, _, _ = load_artifact(root)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert module.accel_sparse_pattern == "2:4" and torch.equal(module.accel_sparse_mask, mask), name


def test_decode_goes_through_the_2_4_kernel_with_the_dense_logits(artifact):
    root, _ = artifact
    dense = load_for_inference(root, dtype=torch.float32)
    registry = load_registry(PluginPolicy())
    registry.manager.register(cpu_sparse_backend(), name="cpu-sparse24")
    sparse = load_for_inference(root, dtype=torch.float32, registry=registry)
    sparse_linears = [m for m in sparse.modules() if isinstance(m, W4A16Sparse24Linear)]
    # q/k/v fuse into one and gate/up into one: per layer qkv, o, gate_up, down
    assert len(sparse_linears) == 4 * 2 and all(m.backend == "cpu-sparse24" for m in sparse_linears)
    assert not any(isinstance(m, W4A16Sparse24Linear) for m in dense.modules())
    assert any(isinstance(m, W4A16Linear) for m in dense.modules())

    calls = []
    for module in sparse_linears:
        module.register_forward_hook(lambda mod, args, out: calls.append(args[0].numel() // mod.in_features))
    prompt, steps = [1, 5, 9, 14, 3], [7, 2, 11]
    logits = []
    for runtime in (dense, sparse):
        cache = runtime.new_cache(1, len(prompt) + len(steps))
        with torch.no_grad():
            got = [runtime.prefill(torch.tensor([prompt]), torch.tensor([len(prompt)]), cache, all_logits=True)[0]]
            got += [runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps]
        logits.append(torch.cat(got))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)
    assert calls.count(1) == len(sparse_linears) * len(steps)  # every decode step through each 2:4 layer


def test_without_a_2_4_kernel_the_dense_path_serves(artifact):
    root, _ = artifact
    model = load_for_inference(root, dtype=torch.float32)  # the CPU has only core's reference: dense W4A16
    assert not any(isinstance(m, W4A16Sparse24Linear) for m in model.modules())


def test_compact_2_4_equals_the_artifact_encoding():
    """The runtime's on-device encoding (quant_backend.compact_2_4) is byte for byte the artifact's (encode_layer)."""
    from accel.runtime.quant_backend import compact_2_4
    from accel.sparsity.storage import StoredLayer, encode_layer
    from accel.sparsity.structured import nm_mask

    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-8, 8, (24, 256), generator=gen, dtype=torch.int8)
    mask = nm_mask(torch.rand(24, 256, generator=gen), 2, 4)
    codes = codes.masked_fill(~mask, 0)
    tensors, _ = encode_layer("w", "2:4", (1, 1), mask, StoredLayer(codes, torch.empty(0), packed_bits=4))
    values, indices = compact_2_4(codes, mask)
    assert torch.equal(values, tensors["w.weight_nm_values"]) and torch.equal(indices, tensors["w.weight_nm_indices"])
