"""Core's built-in draft strategies, registered through the draft-strategy hook.

Factories take the SpeculativeConfig and the resources their spec `needs` as keyword arguments:
`target` (the model being accelerated), `tokenizer`, `registry` (the PluginRegistry) and `draft_model`.
"""

from __future__ import annotations

import copy

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import DraftStrategySpec
from accel.plugins.registry import PluginRegistry
from accel.quantization.pipeline import quantize_model
from accel.schema import SpeculativeConfig
from accel.speculative.draft import ModelDraft, NGramDraft, default_skip_layers, layer_skip_model
from accel.tools.presets import get_preset

DEFAULT_DRAFT_QUANTIZATION = "w8a16"


def _ngram(config: SpeculativeConfig, **_resources: object) -> NGramDraft:
    return NGramDraft.from_config(config)


def _draft_model(config: SpeculativeConfig, *, draft_model: PreTrainedModel, **_resources: object) -> ModelDraft:
    return ModelDraft(draft_model)


def _layer_skip(config: SpeculativeConfig, *, target: PreTrainedModel, **_resources: object) -> ModelDraft:
    skip = config.skip_layers or default_skip_layers(len(target.get_decoder().layers))
    return ModelDraft(layer_skip_model(target, skip))


def _self_quant(
    config: SpeculativeConfig,
    *,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    registry: PluginRegistry,
    **_resources: object,
) -> ModelDraft:
    profile = get_preset(config.draft_quantization or DEFAULT_DRAFT_QUANTIZATION).quantization
    draft = copy.deepcopy(target)
    quantize_model(draft, tokenizer, profile, registry, progress=False)
    return ModelDraft(draft)


@hookimpl
def accel_register_draft_strategies() -> list[DraftStrategySpec]:
    return [
        DraftStrategySpec(
            name="ngram",
            description="prompt lookup: continue the latest earlier match of the last n tokens",
            factory=_ngram,
            deterministic=True,
        ),
        DraftStrategySpec(
            name="draft_model",
            description="a separate small model sharing the target's tokenizer drafts k tokens",
            factory=_draft_model,
            deterministic=False,
            needs=("draft_model",),
        ),
        DraftStrategySpec(
            name="layer_skip",
            description="self-speculative: the target with skip_layers bypassed drafts (default: every other "
            "upper-half layer)",
            factory=_layer_skip,
            deterministic=False,
            needs=("target",),
        ),
        DraftStrategySpec(
            name="self_quant",
            description="the target quantized to W8 or W4 (draft_quantization preset, default w8a16) drafts for itself",
            factory=_self_quant,
            deterministic=False,
            needs=("target", "tokenizer", "registry"),
        ),
    ]
