"""The runtime decoder against transformers: the bundled SmolLM2 in float32 (prefill and decode logits), and tiny
random Llama (llama3 RoPE scaling, untied head), Qwen2 (q/k/v biases) and Mistral models for the other shapes; its
norms through the registry's rms_norm kernel, eager and compiled."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from accel.plugins import KernelBackendSpec, load_registry
from accel.plugins.backend import BackendPlugin
from accel.plugins.loader import PluginPolicy
from accel.plugins.registry import PluginRegistry
from accel.runtime.kv_cache import StaticKVCache
from accel.runtime.loaders import load_model
from accel.runtime.model import (
    RANDOM_QUANT,
    DecoderModel,
    FusedOp,
    ModelArgs,
    RMSNorm,
    from_hf,
    from_state_dict,
    random_model,
)
from accel.runtime.norm_ops import add_rms_norm, rms_norm
from accel.runtime.quant_backend import DenseLinear, RuntimeLinear
from accel.runtime.rope_kv_ops import rotary_kv_cache_write
from accel.runtime.rope_ops import rotary_embedding
from accel.schema import CapabilityDescriptor

PROMPT = "The capital of France is a city that"
# float32 on both sides: the same operations in the same order up to matmul blocking, so far under 1e-4.
RELATIVE = 1e-4


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


@pytest.fixture(scope="module", autouse=True)
def two_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, threads))
    yield
    torch.set_num_threads(threads)


def small(config_class: type[PretrainedConfig], **fields: object) -> PretrainedConfig:
    base = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    return config_class(**{**base, **fields})


def run_both(hf: PreTrainedModel, runtime: DecoderModel, ids: list[int], steps: list[int]) -> tuple:
    """(runtime logits, transformers logits) over the prompt then `steps` one decode token at a time."""
    cache = runtime.new_cache(1, len(ids) + len(steps))
    with torch.no_grad():
        prompt = torch.tensor([ids])
        got = [runtime.prefill(prompt, torch.tensor([len(ids)]), cache, all_logits=True)[0]]
        got += [runtime.decode(torch.tensor([[tok]]), cache)[0] for tok in steps]
        expected = hf(torch.tensor([ids + steps])).logits[0]
    return torch.cat(got), expected


# ------------------------------------------------------------------------------------- bundled model


@pytest.fixture(scope="module")
def bundled():
    return load_model(dtype=torch.float32)


@pytest.mark.slow
def test_bundled_logits_match_transformers(bundled) -> None:
    hf, tokenizer = bundled
    runtime = from_hf(hf)
    ids = tokenizer(PROMPT).input_ids
    steps = [553, 719, 253, 37257, 282]  # the model's own greedy continuation
    got, expected = run_both(hf, runtime, ids, steps)
    assert relative_error(got[: len(ids)], expected[: len(ids)]) < RELATIVE  # prefill
    assert relative_error(got[len(ids) :], expected[len(ids) :]) < RELATIVE  # decode through the cache
    assert runtime.kernel_meta() == {
        "add_rms_norm": "reference",
        "cached_attention": "reference",
        "kv_cache_write": "reference",
        "linear": "torch",
        "rms_norm": "reference",
        "rotary_embedding": "reference",
        "rotary_kv_cache_write": "reference",
        "silu_and_mul": "reference",
    }


@pytest.mark.slow
def test_state_dict_build_equals_module_build(bundled) -> None:
    hf, tokenizer = bundled
    state = {name: tensor for name, tensor in hf.state_dict().items() if name != "lm_head.weight"}  # tied
    runtime = from_state_dict(hf.config, state, dtype=torch.float32)
    assert runtime.lm_head.weight is runtime.embed_weight
    ids = tokenizer(PROMPT).input_ids
    got, expected = run_both(hf, runtime, ids, [553])
    assert relative_error(got, expected) < RELATIVE


# ------------------------------------------------------------------------------------- other shapes


@pytest.mark.parametrize(
    ("name", "model_class", "config"),
    [
        (
            "llama3-rope-untied",
            LlamaForCausalLM,
            small(
                LlamaConfig,
                tie_word_embeddings=False,
                rope_scaling={
                    "rope_type": "llama3",
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 32,
                },
            ),
        ),
        (
            "llama-linear-rope-biases",
            LlamaForCausalLM,
            small(LlamaConfig, attention_bias=True, mlp_bias=True, rope_scaling={"rope_type": "linear", "factor": 2.0}),
        ),
        ("qwen2-qkv-bias", Qwen2ForCausalLM, small(Qwen2Config, tie_word_embeddings=True)),
        ("mistral", MistralForCausalLM, small(MistralConfig, sliding_window=None)),
    ],
)
def test_family_shapes_match_transformers(name: str, model_class: type, config: PretrainedConfig) -> None:
    torch.manual_seed(0)
    hf = model_class(config).eval()
    with torch.no_grad():  # transformers initialises biases to zero; make them matter
        for module_name, param in hf.named_parameters():
            if module_name.endswith("bias"):
                param.normal_(0, 0.5)
    runtime = from_hf(hf)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 256, (40,), generator=gen).tolist()  # past original_max_position_embeddings
    got, expected = run_both(hf, runtime, ids, [5, 17, 99])
    assert relative_error(got, expected) < RELATIVE, name


def test_qwen2_stacks_its_qkv_biases() -> None:
    args = ModelArgs.from_config(small(Qwen2Config))
    assert args.qkv_bias and not args.o_bias and args.head_dim == 16 and args.sliding_window is None


def test_unsupported_architectures_are_named() -> None:
    with pytest.raises(ValueError, match="config.model_type 'gpt2'"):
        ModelArgs.from_config(PretrainedConfig(model_type="gpt2"))
    with pytest.raises(ValueError, match="hidden_act 'gelu'"):
        ModelArgs.from_config(small(LlamaConfig, hidden_act="gelu"))
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        ModelArgs.from_config(small(LlamaConfig, rope_scaling={"rope_type": "yarn", "factor": 2.0}))


def test_cache_limits_name_the_field() -> None:
    runtime = random_model(small(MistralConfig, sliding_window=32), dtype=torch.float32)
    with pytest.raises(ValueError, match="max_position_embeddings 256"):
        runtime.new_cache(1, 512)
    with pytest.raises(ValueError, match="sliding_window 32"):
        runtime.new_cache(1, 64)
    cache = runtime.new_cache(1, 8)
    with pytest.raises(ValueError, match="max_batch 1"):
        runtime.prefill(torch.zeros(2, 3, dtype=torch.long), torch.tensor([3, 3]), cache)
    with pytest.raises(ValueError, match="max_seq 8"):
        runtime.prefill(torch.zeros(1, 9, dtype=torch.long), torch.tensor([9]), cache)


# ------------------------------------------------------------------------------------- random models


@pytest.mark.parametrize("quant", RANDOM_QUANT)
def test_random_model_runs_every_format(quant: str) -> None:
    config = small(LlamaConfig, tie_word_embeddings=True)
    runtime = random_model(config, dtype=torch.float32, quant=quant, group_size=32)
    ops = {module.op for module in runtime.modules() if isinstance(module, RuntimeLinear)}
    expected = {
        "none": "linear",
        "w4a16": "w4a16_linear",
        "w4a16-asym": "w4a16_linear",
        "w4a16-2:4": "w4a16_linear",  # on the CPU no backend has a 2:4 kernel: the dense-with-zeros weights run
        "w8a16": "dequant_linear",
        "w8a8-int8": "w8a8_int8_linear",
        "w8a8-fp8": "fp8_linear",
    }[quant]
    assert ops == {"linear", expected}  # the tied head stays dense
    cache = runtime.new_cache(2, 16)
    with torch.no_grad():
        logits = runtime.prefill(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]), cache)
        step = runtime.decode(torch.tensor([[7], [8]]), cache)
    assert logits.shape == (2, 256) and step.shape == (2, 1, 256)
    assert torch.isfinite(logits).all() and torch.isfinite(step).all()
    assert cache.seq_lens.tolist() == [4, 3]


def test_random_model_is_seeded_and_in_its_dtype() -> None:
    config = small(LlamaConfig, tie_word_embeddings=False)
    first = random_model(config, dtype=torch.bfloat16, seed=3)
    second = random_model(config, dtype=torch.bfloat16, seed=3)
    assert torch.equal(first.embed_weight, second.embed_weight)
    assert all(t.dtype == torch.bfloat16 for t in first.buffers() if t.is_floating_point())
    assert isinstance(first.lm_head, DenseLinear) and first.lm_head.weight is not first.embed_weight
    with pytest.raises(ValueError, match="quant must be one of"):
        random_model(config, quant="w3a3")


@pytest.mark.parametrize("tied", [True, False])
def test_random_model_quantizes_lm_head_on_request(tied: bool) -> None:
    config = small(LlamaConfig, tie_word_embeddings=tied)
    runtime = random_model(config, dtype=torch.float32, quant="w4a16", group_size=32, quantize_lm_head=True)
    assert runtime.lm_head.op == "w4a16_linear"  # its own int4 head, tied or not; the embedding stays dense
    assert runtime.embed_weight.dtype == torch.float32
    cache = runtime.new_cache(1, 8)
    with torch.no_grad():
        logits = runtime.prefill(torch.tensor([[1, 2, 3]]), torch.tensor([3]), cache)
    assert logits.shape == (1, 256) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="quantize_lm_head needs a weight format"):
        random_model(config, quantize_lm_head=True)


@pytest.mark.parametrize("quant", ["none", "w4a16-asym"])
def test_stacked_projections_equal_separate_ones(quant: str) -> None:
    config = small(Qwen2Config)  # q/k/v biases stack too
    fused = random_model(config, dtype=torch.float32, quant=quant, group_size=32)
    separate = random_model(config, dtype=torch.float32, quant=quant, group_size=32, fuse=False)
    assert type(separate.layers[0].self_attn.qkv_proj).__name__ == "Stacked"
    assert type(fused.layers[0].self_attn.qkv_proj).__name__ != "Stacked"
    tokens, lengths = torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([5])
    with torch.no_grad():
        got = fused.prefill(tokens, lengths, fused.new_cache(1, 8), all_logits=True)
        expected = separate.prefill(tokens, lengths, separate.new_cache(1, 8), all_logits=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------- the norm op


def registry_with_norm_kernel(calls: list[tuple[str | int, ...]]) -> PluginRegistry:
    """A registry whose CPU backend serves rms_norm and add_rms_norm (core's references, recording each call's op
    and shape), registered as a third party's would be: the model must take its norms' kernels from the registry."""

    def kernel(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        calls.append(("rms_norm", *x.shape))
        return rms_norm(x, weight, eps)

    def add_kernel(
        x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(("add_rms_norm", *x.shape))
        return add_rms_norm(x, residual, weight, eps)

    return registry_with_cpu_backend("cpu-rms-norm", {"rms_norm": kernel, "add_rms_norm": add_kernel})


def registry_with_cpu_backend(name: str, kernels: dict[str, Callable[..., Any]]) -> PluginRegistry:
    """A registry with a CPU backend `name` serving `kernels` (op -> kernel) ahead of the reference, registered as a
    third party's would be."""
    spec = KernelBackendSpec(
        name=name,
        description="core's references served as backend kernels on the CPU (test plugin)",
        device_type="cpu",
        is_available=lambda: True,
        capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"),
        kernels=lambda: kernels,
        priority=1,
    )
    registry = load_registry(PluginPolicy())
    registry.manager.register(BackendPlugin(spec), name=name)
    return registry


def test_every_norm_runs_the_selected_kernel() -> None:
    """2 norms per layer and the final one, each one call of the registry's kernels: the first layer's input norm
    alone, every later one with the residual add before it; the logits are the reference model's, and kernel_meta
    names the backend."""
    calls: list[tuple[str | int, ...]] = []
    config = small(LlamaConfig)
    runtime = random_model(config, dtype=torch.bfloat16, registry=registry_with_norm_kernel(calls))
    plain = random_model(config, dtype=torch.bfloat16)
    meta, plain_meta = runtime.kernel_meta(), plain.kernel_meta()
    assert (meta["rms_norm"], meta["add_rms_norm"]) == ("cpu-rms-norm", "cpu-rms-norm")
    assert (plain_meta["rms_norm"], plain_meta["add_rms_norm"]) == ("reference", "reference")
    tokens, lengths = torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([5])
    with torch.no_grad():
        got = runtime.prefill(tokens, lengths, runtime.new_cache(1, 8), all_logits=True)
        expected = plain.prefill(tokens, lengths, plain.new_cache(1, 8), all_logits=True)
    assert calls == [("rms_norm", 1, 5, 64)] + [("add_rms_norm", 1, 5, 64)] * (2 * config.num_hidden_layers)
    assert torch.equal(got, expected)


def test_the_unsummed_residual_stream_computes_the_summed_one() -> None:
    """The layers pass (branch output, residual) along and add them inside the next norm: the same bits as the
    plain pre-norm block x + attn(norm(x)), then + mlp(norm(.)), written out here with the model's own modules."""
    config = small(LlamaConfig)
    model = random_model(config, dtype=torch.bfloat16)
    tokens, lengths = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 0]]), torch.tensor([5, 4])
    with torch.no_grad():
        got = model.prefill(tokens, lengths, model.new_cache(2, 8), all_logits=True)
        cache = model.new_cache(2, 8)
        cos, sin = model._rope_tables(8)
        cos, sin = cos[None, :5], sin[None, :5]
        x = torch.nn.functional.embedding(tokens, model.embed_weight)
        for layer in model.layers:
            h = x + layer.self_attn(layer.input_layernorm(x), cos, sin, cache.rows(2), None, None)
            x = h + layer.mlp(layer.post_attention_layernorm(h))
        expected = model.lm_head(model.norm(x))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("backend_kernel", [False, True], ids=["reference", "backend"])
def test_a_compiled_decode_step_equals_the_eager_one(backend_kernel: bool) -> None:
    """The decode step under torch.compile, as Generator(compile=True) runs it: the norms trace the reference into
    the graph (fullgraph) even where a backend's kernel runs them eagerly, so Inductor can fuse them."""
    calls: list[tuple[str | int, ...]] = []
    runtime = random_model(
        small(LlamaConfig), dtype=torch.float32, registry=registry_with_norm_kernel(calls) if backend_kernel else None
    )
    outputs = []
    for compiled in (False, True):
        cache = runtime.new_cache(2, 16)
        step = torch.compile(runtime.decode, backend="aot_eager", fullgraph=True)
        with torch.no_grad():
            runtime.prefill(torch.tensor([[1, 2, 3], [4, 5, 0]]), torch.tensor([3, 2]), cache)
            outputs.append((step if compiled else runtime.decode)(torch.tensor([[7], [8]]), cache))
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    assert len(calls) == (3 * 5 if backend_kernel else 0)  # eager: 2 prefills and 1 decode, 5 norms each


# ------------------------------------------------------------------------------ RoPE fused with the KV cache write


def registry_with_rotary_write_kernel(calls: list[tuple[str | int, ...]]) -> PluginRegistry:
    """A registry whose CPU backend serves rotary_kv_cache_write (core's reference, recording each call's q shape and
    format), registered as a third party's would be: the model's decode must take it from the registry."""

    def kernel(*args: Any) -> torch.Tensor:
        calls.append((*args[0].shape, args[-1]))
        return rotary_kv_cache_write(*args)

    return registry_with_cpu_backend("cpu-rope-kv-write", {"rotary_kv_cache_write": kernel})


def unfused_write_rotary(
    self: StaticKVCache,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The decode step's RoPE and cache write before they were one op: rotary_embedding, then `write`."""
    q_rot, k_rot = rotary_embedding(q, k, cos, sin)
    self.write(layer, k_rot.transpose(1, 2), v.transpose(1, 2), positions)
    return q_rot


@pytest.mark.parametrize("kv_format", ["none", "int8", "int4"])
def test_decode_rotates_and_writes_in_one_op_per_layer(kv_format: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decode (T = 1, then a T = 2 verification step) runs RoPE and the KV cache write as one rotary_kv_cache_write
    call per layer, the registry's kernel (prefill keeps rotary_embedding and kv_cache_write); logits and cache bytes
    are the unfused step's, bit for bit."""
    calls: list[tuple[str | int, ...]] = []
    config = small(LlamaConfig, hidden_size=128)  # head_dim 32: one int4 group
    fused = random_model(
        config, dtype=torch.bfloat16, kv_format=kv_format, registry=registry_with_rotary_write_kernel(calls)
    )
    plain = random_model(config, dtype=torch.bfloat16, kv_format=kv_format)  # the same seed: the same weights
    assert fused.kernel_meta()["rotary_kv_cache_write"] == "cpu-rope-kv-write"
    assert plain.kernel_meta()["rotary_kv_cache_write"] == "reference"
    tokens, lengths = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 0]]), torch.tensor([5, 4])

    def run(model: DecoderModel) -> tuple[list[torch.Tensor], StaticKVCache]:
        cache = model.new_cache(2, 12)
        with torch.no_grad():
            logits = [model.prefill(tokens, lengths, cache, all_logits=True)]
            logits += [model.decode(step, cache) for step in (torch.tensor([[6], [9]]), torch.tensor([[2, 6], [5, 3]]))]
        return logits, cache

    got, cache = run(fused)
    layers = config.num_hidden_layers
    assert calls == [(2, 1, 4, 32, kv_format)] * layers + [(2, 2, 4, 32, kv_format)] * layers
    with monkeypatch.context() as patch:
        patch.setattr(StaticKVCache, "write_rotary", unfused_write_rotary)
        expected, plain_cache = run(plain)
    assert all(torch.equal(g, e) for g, e in zip(got, expected, strict=True))
    for stored, plain_stored in zip(cache.keys + cache.values, plain_cache.keys + plain_cache.values, strict=True):
        for part, plain_part in zip(stored, plain_stored, strict=True):
            assert part is None or torch.equal(part.view(torch.uint8), plain_part.view(torch.uint8))


# ------------------------------------------------------------------------------ fused activation quantization


def _unfuse_activation_quant(model: DecoderModel) -> None:
    """Back to every W8A8 linear quantizing its own 16-bit input."""
    for module in model.modules():
        if isinstance(module, RMSNorm):
            module.quant, module.quant_ops = None, None


@pytest.mark.parametrize("quant", ["w8a8-int8", "w8a8-fp8"])
def test_norms_and_swiglu_quantize_for_the_w8a8_linears_after_them(quant: str) -> None:
    """W8A8 (dynamic per token): the norms before qkv_proj / gate_up_proj emit the codes (ops rms_norm_quant,
    add_rms_norm_quant; the linears multiply them: w8a8_scaled_mm); the final norm feeds the 16-bit lm_head and
    stays plain. Same bits as each linear quantizing its own input, in prefill, in a decode step and in a compiled
    decode step."""
    config = small(LlamaConfig)
    model = random_model(config, dtype=torch.bfloat16, quant=quant)
    norms = [module for module in model.modules() if isinstance(module, RMSNorm)]
    assert [norm.quant for norm in norms] == [quant[5:]] * (2 * config.num_hidden_layers) + [None]
    meta = model.kernel_meta()
    for op in ("rms_norm_quant", "add_rms_norm_quant", "w8a8_scaled_mm"):
        assert meta[op] == "reference"
    tokens, lengths = torch.tensor([[3, 1, 4, 1, 5], [2, 7, 1, 8, 0]]), torch.tensor([5, 4])
    step = torch.tensor([[6], [9]])

    def run(compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        cache = model.new_cache(2, 8)
        decode = torch.compile(model.decode, backend="aot_eager", fullgraph=True) if compiled else model.decode
        with torch.no_grad():
            return model.prefill(tokens, lengths, cache, all_logits=True), decode(step, cache)

    fused, fused_compiled = run(False), run(True)
    _unfuse_activation_quant(model)
    plain = run(False)
    for got, expected in zip((*fused, *fused_compiled), (*plain, *plain), strict=True):
        assert torch.equal(got, expected)


# ------------------------------------------------------------------------------------- norms folded into W4A16


def _fold_pair(dtype: torch.dtype, quantize_lm_head: bool) -> DecoderModel:
    """A random W4A16 model (symmetric, group 32) whose norms have spread weights (random_model's are ones)."""
    runtime = random_model(
        small(LlamaConfig, tie_word_embeddings=False), dtype=dtype, quant="w4a16", group_size=32,
        quantize_lm_head=quantize_lm_head,
    )
    gen = torch.Generator().manual_seed(5)
    for module in runtime.modules():
        if isinstance(module, RMSNorm):
            module.weight.copy_(1.0 + 0.5 * torch.randn(module.weight.shape, generator=gen))
    return runtime


@pytest.mark.parametrize("quantize_lm_head", [False, True], ids=["bf16-head", "int4-head"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_folded_norms_decode_as_the_unfused_model(dtype, quantize_lm_head, monkeypatch):
    """A batch-1 decode step with the norms inside the W4A16 linears (norm_fold_ops, forced here: on the CPU the
    reference runs them, so the model does not fold on its own) gives the unfused step's logits, to float32
    rounding in float32 and to the moved bf16 roundings in bf16; only the first layer's input norm still runs as a
    norm (and the final one where lm_head is 16-bit); decode_hidden still returns the normed hidden states."""
    runtime = _fold_pair(dtype, quantize_lm_head)
    assert not runtime.folds_norms()  # auto: the reference kernels gain nothing from folding
    runtime.fold_norms = True
    assert runtime.folds_norms()
    calls: list[str] = []
    forward, add = RMSNorm.forward, RMSNorm.add
    monkeypatch.setattr(RMSNorm, "forward", lambda self, x: calls.append("norm") or forward(self, x))
    monkeypatch.setattr(RMSNorm, "add", lambda self, x, r: calls.append("add") or add(self, x, r))
    fused_call = FusedOp.__call__
    monkeypatch.setattr(FusedOp, "__call__", lambda self, *a: calls.append(self.op) or fused_call(self, *a))

    def steps(fold: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        runtime.fold_norms = fold
        cache = runtime.new_cache(1, 16)
        logits, hidden = [], []
        with torch.no_grad():
            runtime.prefill(torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([5]), cache)
            for tok in (9, 2, 6):
                calls.clear()
                logits.append(runtime.decode(torch.tensor([[tok]]), cache))
                hidden.append(runtime.decode_hidden(torch.tensor([[tok]]), cache)[1])
        return logits, hidden

    folded, folded_hidden = steps(True)
    norms_folded = list(calls)
    unfused, unfused_hidden = steps(False)
    norms_unfused = list(calls)
    bound = 1e-5 if dtype == torch.float32 else 3e-2
    for got, want in zip(folded + folded_hidden, unfused + unfused_hidden, strict=True):
        assert relative_error(got.float(), want.float()) < bound
    layers = runtime.args.num_layers
    norm_calls = [call for call in norms_unfused if call in ("norm", "add")]
    assert norm_calls == ["norm"] + ["add"] * (2 * layers) + ["norm"] + ["add"] * (2 * layers)
    assert norms_unfused.count("silu_and_mul") == 2 * layers
    # decode: the first input norm only (+ the final add-norm for a 16-bit head); decode_hidden keeps the final norm;
    # SwiGLU runs inside gate/up (w4a16_linear_silu_mul) in both
    head = [] if quantize_lm_head else ["add"]
    assert [call for call in norms_folded if call in ("norm", "add", "silu_and_mul")] == ["norm", *head, "norm", "add"]
    assert "w4a16_linear_rms" not in runtime.kernel_meta()
    runtime.fold_norms = True
    assert runtime.folds_silu()
    meta = runtime.kernel_meta()
    assert meta["w4a16_linear_rms"] == meta["w4a16_linear_residual"] == meta["w4a16_linear_silu_mul"] == "reference"


def test_folding_needs_every_layer_to_fold():
    runtime = _fold_pair(torch.float32, quantize_lm_head=False)
    runtime.fold_norms = True
    runtime.layers[1].mlp.down_proj.bias = torch.zeros(64)  # a bias: its epilogue cannot fold the residual
    assert not runtime.folds_norms()
    runtime.layers[1].mlp.down_proj.bias = None
    assert runtime.folds_norms()
    runtime.fold_norms = False
    assert not runtime.folds_norms()


def _folding_runtime(
    fold_ops: tuple[str, ...], accepts: Callable[..., bool], calls: list[str]
) -> DecoderModel:
    """A random W4A16 model on a third-party CPU backend serving the W4A16 op, `fold_ops`, the norms and SwiGLU
    (core's references, each call's op recorded in `calls`), whose folding ops' KernelChoice.accepts is `accepts`."""
    import dataclasses

    from accel.plugins.hookspecs import hookimpl
    from accel.runtime.ops import OPS

    def counted(op: str) -> Callable[..., Any]:
        return lambda *args: calls.append(op) or OPS[op].reference(*args)

    served = ("w4a16_linear", *fold_ops, "rms_norm", "add_rms_norm", "silu_and_mul", "rotary_kv_cache_write")
    kernels = {op: counted(op) for op in served}

    class FoldingPlugin(BackendPlugin):
        @hookimpl
        def accel_select_kernel(self, op: str, capability: CapabilityDescriptor):  # type: ignore[no-untyped-def]
            choice = super().accel_select_kernel(op, capability)
            return dataclasses.replace(choice, accepts=accepts) if choice is not None and op in fold_ops else choice

    spec = KernelBackendSpec(
        name="foldcpu", description="core's references as a CPU backend with fused norm folds (test plugin)",
        device_type="cpu", is_available=lambda: True,
        capability=lambda: CapabilityDescriptor(device_name="cpu", device_type="cpu"), kernels=lambda: kernels,
        priority=1,
    )
    registry = load_registry(PluginPolicy())
    registry.manager.register(FoldingPlugin(spec), name="foldcpu")
    return random_model(small(LlamaConfig), dtype=torch.float32, quant="w4a16", group_size=32, registry=registry)


def _decode_calls(runtime: DecoderModel, batch: int, calls: list[str]) -> list[str]:
    cache = runtime.new_cache(batch, 16)
    with torch.no_grad():
        runtime.prefill(torch.ones(batch, 3, dtype=torch.int64), torch.full((batch,), 3), cache)
        calls.clear()
        runtime.decode(torch.ones(batch, 1, dtype=torch.int64), cache)
    return list(calls)


def test_folding_follows_the_backends_accepts() -> None:
    """A third-party CPU backend serving the W4A16 op and the norm-folding ops, whose KernelChoice.accepts says its
    fused kernels run for one activation row only: the model folds its norms at batch 1 (the folding ops run, one
    norm launch is left) and not at batch 2 (every norm runs, the folding ops do not); SwiGLU, which it does not
    serve folded, runs on its own."""
    calls: list[str] = []
    asked: list[int] = []

    def accepts(rows: int, dtype: torch.dtype, device: torch.device, *weights: Any, **kwargs: Any) -> bool:
        asked.append(rows)
        return rows == 1

    fold_ops = ("w4a16_linear_residual", "w4a16_linear_rms")
    runtime = _folding_runtime(fold_ops, accepts, calls)
    assert runtime.kernel_meta()["w4a16_linear"] == "foldcpu"
    assert runtime.folds_norms(1) and not runtime.folds_norms(2) and not runtime.folds_silu(1)
    assert set(asked) == {1, 2}
    layers = runtime.args.num_layers
    for batch, folds in ((1, True), (2, False)):
        seen = _decode_calls(runtime, batch, calls)
        norms = seen.count("rms_norm") + seen.count("add_rms_norm")
        assert seen.count("silu_and_mul") == layers
        if folds:
            # left: the first input norm and the final one (16-bit lm_head); folded: every o and down but the last
            # down (its residual goes to the final norm), every gate/up and q/k/v but the first layer's
            assert norms == 2
            assert seen.count("w4a16_linear_residual") == seen.count("w4a16_linear_rms") == 2 * layers - 1
        else:
            assert norms == 2 * layers + 1 and not any(op in seen for op in fold_ops)


@pytest.mark.parametrize("silu_env", [None, "0"])
def test_swiglu_folds_into_gate_up_where_served(silu_env, monkeypatch) -> None:
    """The same backend serving w4a16_linear_silu_mul too: each layer's gate/up returns SwiGLU's output itself (no
    silu_and_mul launch; after the first layer it also applies the norm's scale), unless ACCEL_FOLD_SILU=0."""
    if silu_env is not None:
        monkeypatch.setenv("ACCEL_FOLD_SILU", silu_env)
    calls: list[str] = []
    fold_ops = ("w4a16_linear_residual", "w4a16_linear_rms", "w4a16_linear_silu_mul")
    runtime = _folding_runtime(fold_ops, lambda rows, *args, **kwargs: rows == 1, calls)
    layers = runtime.args.num_layers
    seen = _decode_calls(runtime, 1, calls)
    assert runtime.folds_norms(1)
    if silu_env is None:
        assert runtime.folds_silu(1) and runtime.kernel_meta()["w4a16_linear_silu_mul"] == "foldcpu"
        assert "silu_and_mul" not in seen and seen.count("w4a16_linear_silu_mul") == layers
        assert seen.count("w4a16_linear_rms") == layers - 1  # the q/k/v of every layer but the first
    else:
        assert not runtime.folds_silu(1) and "w4a16_linear_silu_mul" not in runtime.kernel_meta()
        assert seen.count("silu_and_mul") == layers and "w4a16_linear_silu_mul" not in seen


@pytest.mark.parametrize("rope_env", [None, "0"])
def test_rope_and_the_cache_write_fold_into_qkv_where_served(rope_env, monkeypatch) -> None:
    """A backend serving w4a16_linear_rope_kv whose accepts takes one row into a 16-bit cache: at batch 1 each
    layer's q/k/v linear rotates q and k and writes the cache itself (no rotary_kv_cache_write call) with the logits
    of the unfused step bit for bit (the reference is that chain); at batch 2, into an int8 cache, with
    ACCEL_FOLD_ROPE=0 or fold_rope False it does not; the accepts saw the cache's format and the heads."""
    if rope_env is not None:
        monkeypatch.setenv("ACCEL_FOLD_ROPE", rope_env)
    calls: list[str] = []
    asked: list[tuple[int, str, int, int]] = []

    def accepts(rows: int, *args: Any, kv_format: str = "", head_dim: int = 0, num_heads: int = 0, **kw: Any) -> bool:
        asked.append((rows, kv_format, head_dim, num_heads))
        return rows == 1 and kv_format == "none"

    runtime = _folding_runtime(("w4a16_linear_rope_kv",), accepts, calls)
    layers, args = runtime.args.num_layers, runtime.args
    folds = rope_env is None
    assert runtime.folds_rope(1, runtime.new_cache(1, 16)) == folds
    assert not runtime.folds_rope(2, runtime.new_cache(2, 16))
    assert not runtime.folds_rope(1, runtime.new_cache(1, 16, kv_format="int8"))
    if folds:
        assert {(1, fmt, args.head_dim, args.num_heads) for fmt in ("none", "int8")} <= set(asked)
        assert runtime.kernel_meta()["w4a16_linear_rope_kv"] == "foldcpu"
    else:
        assert "w4a16_linear_rope_kv" not in runtime.kernel_meta()
    seen = _decode_calls(runtime, 1, calls)
    assert seen.count("w4a16_linear_rope_kv") == (layers if folds else 0)
    assert seen.count("rotary_kv_cache_write") == (0 if folds else layers)
    seen = _decode_calls(runtime, 2, calls)
    assert "w4a16_linear_rope_kv" not in seen and seen.count("rotary_kv_cache_write") == layers

    def logits(fold: bool | None) -> list[torch.Tensor]:
        runtime.fold_rope = fold
        cache = runtime.new_cache(1, 16)
        with torch.no_grad():
            runtime.prefill(torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([5]), cache)
            return [runtime.decode(torch.tensor([[tok]]), cache) for tok in (9, 2, 6)]

    for got, want in zip(logits(None), logits(False), strict=True):
        assert torch.equal(got, want)


def test_forced_rope_fold_runs_the_reference_chain() -> None:
    """fold_rope True on the reference backend (no accepts to ask): the op's reference runs in every layer's q/k/v,
    with the unfused step's logits bit for bit; a paged-style cache (not a StaticKVCache) never folds."""
    runtime = _fold_pair(torch.float32, quantize_lm_head=False)

    def logits(fold: bool) -> list[torch.Tensor]:
        runtime.fold_rope = fold
        cache = runtime.new_cache(1, 16)
        with torch.no_grad():
            runtime.prefill(torch.tensor([[3, 1, 4, 1, 5]]), torch.tensor([5]), cache)
            return [runtime.decode(torch.tensor([[tok]]), cache) for tok in (9, 2, 6)]

    runtime.fold_rope = True
    assert runtime.folds_rope(1, runtime.new_cache(1, 16)) and not runtime.folds_rope(1, object())
    assert runtime.kernel_meta()["w4a16_linear_rope_kv"] == "reference"
    for got, want in zip(logits(True), logits(False), strict=True):
        assert torch.equal(got, want)
