"""The run-speculative job behind `sage infer run-speculative` and AccelController.run_speculative_decode.

Builds the drafter a SpeculativeConfig names, with the resources its plugin spec `needs` (the target, its
tokenizer, the registry, or a separate draft model loaded from `config.draft_model`), and decodes.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.plugins.registry import PluginRegistry
from accel.runtime.loaders import load_model
from accel.runtime.model import DecoderModel
from accel.schema import SpeculativeConfig
from accel.speculative.decode import speculative_generate
from accel.speculative.draft import DraftStrategy
from accel.speculative.medusa import MedusaDraft, MedusaHeads, load_heads
from accel.speculative.metrics import RequestMetrics
from accel.speculative.verifier import SamplingParams


def build_drafter(
    registry: PluginRegistry,
    config: SpeculativeConfig,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
) -> DraftStrategy:
    """The strategy's factory called with exactly the resources its spec declares."""
    spec = registry.draft_strategy(config.strategy)
    available: dict[str, Any] = {"target": target, "tokenizer": tokenizer, "registry": registry}
    if "draft_model" in spec.needs:
        if not config.draft_model:
            raise ValueError(f"draft strategy {spec.name!r} needs speculative.draft_model (a model id or directory)")
        available["draft_model"] = load_model(config.draft_model)[0]
    missing = [need for need in spec.needs if need not in available]
    if missing:
        raise ValueError(f"draft strategy {spec.name!r} needs {missing}, which accel cannot provide")
    return spec.factory(config, **{need: available[need] for need in spec.needs})


def chat_input_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    """[1, T] token ids: the chat template with a user turn when the tokenizer has one, else the raw text."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    return tokenizer(prompt, return_tensors="pt")["input_ids"]


def run_speculative(
    registry: PluginRegistry,
    config: SpeculativeConfig,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams,
) -> tuple[torch.Tensor, RequestMetrics]:
    """Decode `input_ids` [1, T] with draft-and-verify; returns the new tokens [1, n] and the metrics."""
    drafter = build_drafter(registry, config, target, tokenizer)
    return speculative_generate(
        target, input_ids, drafter, max_new_tokens, params, config, eos_token_id=tokenizer.eos_token_id
    )


RUNTIME_STRATEGIES = ("ngram", "layer_skip", "self_quant", "draft_model", "medusa")


def runtime_drafter(
    config: SpeculativeConfig, target: PreTrainedModel, model: DecoderModel, max_seq: int
) -> tuple[DraftStrategy | None, MedusaHeads | None]:
    """(the drafter, the draft heads or None) for `config.strategy` on the runtime model `model` of `target`:
    n-gram lookup; the target without draft.default_skip_layers (or config.skip_layers); its self-quantized copy
    (config.draft_quantization, default w4a16-rtn); a separate draft model (config.draft_model); or Medusa heads
    (config.draft_model is their directory), which run inside the target's own steps."""
    from accel.runtime.model import from_hf
    from accel.speculative.draft import NGramDraft, default_skip_layers
    from accel.speculative.runtime_decode import RuntimeModelDraft, layer_subset, self_quant_draft_model

    strategy = config.strategy
    if strategy == "ngram":
        return NGramDraft.from_config(config), None
    if strategy == "medusa":
        if not config.draft_model:
            raise ValueError("draft strategy 'medusa' needs speculative.draft_model (the heads' directory)")
        heads, _ = load_heads(config.draft_model, hidden_size=model.args.hidden_size)
        return None, heads.to(device=model.device, dtype=model.dtype)
    if strategy == "layer_skip":
        skipped = set(config.skip_layers or default_skip_layers(model.args.num_layers))
        draft = layer_subset(model, [i for i in range(model.args.num_layers) if i not in skipped])
    elif strategy == "self_quant":
        preset = config.draft_quantization or "w4a16-rtn"
        draft = self_quant_draft_model(target, preset, dtype=model.dtype, device=model.device)
    elif strategy == "draft_model":
        if not config.draft_model:
            raise ValueError("draft strategy 'draft_model' needs speculative.draft_model (a model id or directory)")
        draft = from_hf(load_model(config.draft_model)[0], dtype=model.dtype, device=model.device)
    else:
        raise ValueError(f"draft strategy {strategy!r} does not run on the runtime; use one of "
                         f"{', '.join(RUNTIME_STRATEGIES)}, or leave out --runtime")
    return RuntimeModelDraft(draft, max_seq=max_seq), None


def run_speculative_runtime(
    config: SpeculativeConfig,
    target: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, RequestMetrics]:
    """`run_speculative` on the accel runtime (bf16 with CUDA graphs on a GPU, float32 on the CPU): the target's
    verification step of width k + 1 is captured like its decode step; k = config.num_speculative_tokens caps the
    dynamic draft length."""
    from accel.runtime.generate import Generator
    from accel.runtime.model import from_hf
    from accel.speculative.runtime_decode import speculative_generate_runtime

    device = torch.device(device)
    model = from_hf(target, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32, device=device)
    k = config.num_speculative_tokens
    prompt = input_ids.reshape(-1).tolist()
    max_seq = len(prompt) + max_new_tokens + k
    drafter, heads = runtime_drafter(config, target, model, max_seq)
    generator = Generator(model, max_seq=max_seq, step_widths=(k + 1,), draft_heads=heads)
    if drafter is None:  # Medusa: the heads draft from the generator's own steps
        drafter = MedusaDraft(generator)
    return speculative_generate_runtime(
        generator, prompt, max_new_tokens, drafter, k=k, temperature=params.temperature, top_k=params.top_k,
        top_p=params.top_p, seed=params.seed, eos_token_id=tokenizer.eos_token_id, config=config,
    )


class MetricsExport:
    """`run-speculative --metrics-port`: the run's Prometheus metrics (accel.integration.metrics.ServingMetrics),
    served on localhost from before decoding until `close`, which keeps them up `hold_s` seconds more so that a
    scraper polling every few seconds sees the finished request."""

    def __init__(self, port: int, config_name: str, price_per_gpu_hour: float | None = None) -> None:
        from accel.integration.metrics import ServingMetrics

        self.metrics = ServingMetrics(config_name, price_per_gpu_hour=price_per_gpu_hour)
        self.server = self.metrics.serve(port)

    @property
    def url(self) -> str:
        return self.server.url

    def observe(self, request: RequestMetrics) -> None:
        self.metrics.observe_speculative(request)

    def close(self, hold_s: float = 0.0) -> None:
        """Keep serving for hold_s seconds (Ctrl-C ends the wait), then stop the exporter."""
        try:
            if hold_s > 0:
                time.sleep(hold_s)
        except KeyboardInterrupt:
            pass
        finally:
            self.server.close()
