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
from accel.schema import SpeculativeConfig
from accel.speculative.decode import speculative_generate
from accel.speculative.draft import DraftStrategy
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
