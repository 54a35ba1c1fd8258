"""Every draft strategy keeps the drafter contract: the conformance kit for those without resources, and the
same checks with real resources (the bundled model) for those that need them; layer skipping and the model
drafter's cache on tiny models."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from accel.plugins import load_registry
from accel.runtime.loaders import load_model
from accel.schema import SpeculativeConfig
from accel.speculative.draft import Draft, DraftStrategy, ModelDraft, default_skip_layers, layer_skip_model
from accel.speculative.verifier import SamplingParams
from accel.testing.conformance import check_draft_proposals

REGISTRY = load_registry()
NEEDS = {"draft_model": ("draft_model",), "layer_skip": ("target",), "self_quant": ("target", "tokenizer", "registry")}


def tiny_llama(layers: int = 4) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.3)
    return LlamaForCausalLM(config).eval()


def test_every_strategy_is_registered_with_its_needs():
    specs = REGISTRY.draft_strategies()
    assert {name: spec.needs for name, spec in specs.items() if spec.needs} == NEEDS
    assert specs["ngram"].deterministic and not any(specs[name].deterministic for name in NEEDS)


@pytest.mark.parametrize("name", sorted(REGISTRY.draft_strategies()))
def test_conformance_kit(name):
    check_draft_proposals(REGISTRY.draft_strategy(name))


def check_contract(drafter: DraftStrategy, deterministic: bool, tokens: torch.Tensor) -> None:
    """The kit's checks: 1-D long proposals of at most k tokens, probability rows summing to 1 when not
    deterministic."""
    for params in (SamplingParams(), SamplingParams(temperature=0.8, top_k=50, top_p=0.95, seed=0)):
        drafter.start(params, params.make_generator())
        for k in (1, 3, 8):
            draft = drafter.propose(tokens, k)
            assert isinstance(draft, Draft)
            assert draft.tokens.ndim == 1 and draft.tokens.dtype == torch.long and len(draft.tokens) <= k
            if deterministic:
                assert draft.probs is None
            else:
                assert draft.probs is not None and draft.probs.shape[0] == len(draft.tokens)
                torch.testing.assert_close(draft.probs.sum(-1), torch.ones(len(draft.tokens)))
                # Each proposed token has draft probability > 0 (it was drawn from q).
                assert (draft.probs.gather(1, draft.tokens[:, None]) > 0).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NEEDS))
def test_strategies_with_resources_keep_the_contract(name):
    model, tokenizer = load_model()
    config = SpeculativeConfig(strategy=name, draft_model="bundled" if name == "draft_model" else None,
                               draft_quantization="w4a16-rtn" if name == "self_quant" else None)
    spec = REGISTRY.draft_strategy(name)
    resources = {"target": model, "tokenizer": tokenizer, "registry": REGISTRY, "draft_model": model}
    drafter = spec.factory(config, **{need: resources[need] for need in spec.needs})
    tokens = tokenizer("The cat sat on the mat. The cat sat on the", return_tensors="pt")["input_ids"][0]
    check_contract(drafter, spec.deterministic, tokens)


def test_default_skip_layers_keep_the_lower_half_and_the_last_layer():
    assert default_skip_layers(30) == [15, 17, 19, 21, 23, 25, 27]
    assert default_skip_layers(4) == [2]


@torch.no_grad()
def test_layer_skip_view_bypasses_layers_and_leaves_the_target_alone():
    target = tiny_llama(4)
    view = layer_skip_model(target, [1, 3])
    assert len(target.model.layers) == 4 and len(view.model.layers) == 2
    assert view.model.layers[1] is target.model.layers[2]  # shared weights
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    two_layers = tiny_llama(2)
    two_layers.model.layers = torch.nn.ModuleList([target.model.layers[0], target.model.layers[2]])
    two_layers.load_state_dict(target.state_dict(), strict=False)
    torch.testing.assert_close(view(ids, use_cache=False).logits, two_layers(ids, use_cache=False).logits)
    with pytest.raises(ValueError, match="layer 0"):
        layer_skip_model(target, [0])


@torch.no_grad()
def test_model_draft_crops_its_cache_to_the_common_prefix():
    """After a rejection the next proposal equals a fresh drafter's: the cache drops the rejected tokens."""
    model = tiny_llama(2)
    used = ModelDraft(layer_skip_model(model, [1]))
    used.start(SamplingParams(), None)
    sequence = torch.tensor([1, 2, 3, 4, 5, 6])
    first = used.propose(sequence, 4).tokens
    rejected = torch.cat([sequence, first[:1], torch.tensor([(int(first[1]) + 1) % 32])])
    fresh = ModelDraft(layer_skip_model(model, [1]))
    fresh.start(SamplingParams(), None)
    assert used.propose(rejected, 3).tokens.tolist() == fresh.propose(rejected, 3).tokens.tolist()
    assert used._cache.get_seq_length() == len(rejected) + 2
