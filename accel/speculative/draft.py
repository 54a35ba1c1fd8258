"""Draft strategies: cheap proposals of the next k tokens that the target model then verifies."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel

from accel.schema import SpeculativeConfig
from accel.speculative.verifier import SamplingParams, logits_to_probs, sample


@dataclass
class Draft:
    """k proposed tokens [k]; `probs` [k, vocab] is the draft distribution q, or None for a
    deterministic drafter (verified with the one-hot rule: q(x) = 1 for the proposed x)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None


class DraftStrategy(ABC):
    """Proposes up to k continuation tokens for a 1-D token sequence."""

    def start(self, params: SamplingParams, generator: torch.Generator | None) -> None:
        """Begin a request: forget per-request state and draw later proposals as `params` says."""
        del params, generator  # stateless, deterministic drafters need neither

    @abstractmethod
    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        """Return at most k tokens that may follow `tokens` [T]; zero tokens means 'no guess'."""


class NGramDraft(DraftStrategy):
    """Prompt lookup decoding: find the most recent earlier occurrence of the sequence's last n tokens
    (n from prompt_lookup_max down to prompt_lookup_min) and propose the k tokens that followed it."""

    def __init__(self, min_n: int = 1, max_n: int = 4) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.min_n, self.max_n = min_n, max_n

    @classmethod
    def from_config(cls, config: SpeculativeConfig) -> NGramDraft:
        return cls(config.prompt_lookup_min, config.prompt_lookup_max)

    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        seq = tokens.tolist()
        length = len(seq)
        for n in range(min(self.max_n, length - 1), self.min_n - 1, -1):
            suffix = seq[length - n :]
            # Scan right to left for the latest earlier match that has at least one follower.
            for start in range(length - n - 1, -1, -1):
                if seq[start : start + n] == suffix:
                    follow = seq[start + n : start + n + k]
                    return Draft(tokens=torch.tensor(follow, dtype=tokens.dtype))
        return Draft(tokens=tokens.new_empty(0))


class ModelDraft(DraftStrategy):
    """Drafts with a causal LM that shares the target's tokenizer (a small model, the target with layers
    skipped, or a quantized copy of the target).

    Each proposal runs k autoregressive forwards, drawing x_i ~ q_i = logits_to_probs(logits_i, params) (the
    argmax when greedy, where q_i is its one-hot), and returns q [k, V] so verification is exact. The drafter
    keeps its own KV cache and the tokens it covers; on the next proposal the cache is cropped to the common
    prefix with the new sequence, which drops exactly the rejected draft tokens.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.params = SamplingParams()
        self.generator: torch.Generator | None = None
        self._cache = DynamicCache()
        self._cached: list[int] = []

    def start(self, params: SamplingParams, generator: torch.Generator | None) -> None:
        self.params, self.generator = params, generator
        self._cache = DynamicCache()
        self._cached = []

    def _last_logits(self, ids: list[int]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        out = self.model(input_ids=torch.tensor([ids], device=device), cache=self._cache, use_cache=True)
        return out.logits[0, -1].float().cpu()

    @torch.no_grad()
    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        seq = tokens.tolist()
        if k == 0 or not seq:
            return Draft(tokens=tokens.new_empty(0), probs=torch.empty(0, self._vocab_size()))
        # Reuse the cached prefix, but feed at least the last token to get its logits.
        keep, limit = 0, min(len(self._cached), len(seq) - 1)
        while keep < limit and self._cached[keep] == seq[keep]:
            keep += 1
        if len(self._cached) > keep:
            self._cache.crop(keep - len(self._cached))
        logits = self._last_logits(seq[keep:])
        proposed, probs = [], []
        for i in range(k):
            q = logits_to_probs(logits, self.params)
            token = int(q.argmax()) if self.params.greedy else int(sample(q, self.generator))
            proposed.append(token)
            probs.append(q)
            if i < k - 1:
                logits = self._last_logits([token])
        self._cached = seq + proposed[:-1]
        return Draft(tokens=torch.tensor(proposed, dtype=torch.long), probs=torch.stack(probs))

    def _vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]


def default_skip_layers(num_layers: int) -> list[int]:
    """Every other layer of the upper half, keeping the last: 15, 17, .., 27 of 30."""
    return list(range(num_layers // 2, num_layers - 1, 2))


def layer_skip_model(target: PreTrainedModel, skip: Sequence[int]) -> PreTrainedModel:
    """A view of `target` whose decoder bypasses the layers in `skip` (the residual stream passes through
    unchanged: h_{l+1} = h_l). Weights are shared, nothing is copied, and `target` itself is not changed.

    Kept layers keep their layer index, so their KV cache entries stay apart; layer 0 must run because a
    lazily built DynamicCache reads the sequence length from it.
    """
    decoder = target.get_decoder()
    num_layers = len(decoder.layers)
    skipped = set(skip)
    if not skipped <= set(range(1, num_layers)):
        raise ValueError(f"skip_layers must lie in 1..{num_layers - 1} (layer 0 always runs), got {sorted(skipped)}")
    view_decoder = copy.copy(decoder)
    view_decoder._modules = dict(decoder._modules)
    view_decoder.layers = nn.ModuleList(layer for i, layer in enumerate(decoder.layers) if i not in skipped)
    view = copy.copy(target)
    view._modules = dict(target._modules)
    name = next(name for name, module in target._modules.items() if module is decoder)
    setattr(view, name, view_decoder)
    return view
