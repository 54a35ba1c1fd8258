"""The draft-verify loop on transformers causal LMs with a KV cache, and plain decoding as its baseline.

One speculative step, with the target's KV cache covering every token but the last accepted one, t:
  1. the drafter proposes d_1 .. d_k for the sequence so far (k <= tokens still wanted - 1);
  2. one target forward over [t, d_1 .. d_k] gives k+1 rows of logits (row i follows d_1 .. d_i);
  3. `verify` keeps a prefix d_1 .. d_a and adds one correction or bonus token, so each step emits a+1 tokens;
  4. the target cache is cropped to the accepted length (it then covers t, d_1 .. d_a), and the emitted
     token is the next step's t.
Draft length is dynamic when configured: k+1 after a fully accepted draft, k-1 after a rejection, within
[min_speculative_tokens, max_speculative_tokens]. The kill switch turns speculation off for the rest of the
request once the acceptance rate over the last `acceptance_window` draft steps is below
`min_acceptance_rate`; a batch larger than `disable_by_batch_size` is decoded plainly. Both count a fallback.
"""

from __future__ import annotations

import time
from collections import deque

import torch
from transformers import DynamicCache, PreTrainedModel

from accel.schema import SpeculativeConfig
from accel.speculative.draft import DraftStrategy
from accel.speculative.metrics import RequestMetrics
from accel.speculative.verifier import SamplingParams, next_token, verify


class DraftSchedule:
    """One request's draft length k and kill switch, as the module docstring describes; shared by every
    draft-verify loop (this module's and accel.speculative.runtime_decode's)."""

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        self.k = config.num_speculative_tokens
        if config.dynamic_draft_length:
            self.k = min(max(self.k, config.min_speculative_tokens), config.max_speculative_tokens)
        self.speculating = config.enabled
        self._window: deque[tuple[int, int]] = deque(maxlen=config.acceptance_window)

    def record(self, accepted: int, drafted: int) -> bool:
        """After a draft step that kept `accepted` of `drafted` (> 0) tokens: adapt k, and return True when the
        kill switch turns speculation off now (the caller counts a fallback)."""
        config = self.config
        if config.dynamic_draft_length:
            grown = min(self.k + 1, config.max_speculative_tokens)
            self.k = grown if accepted == drafted else max(self.k - 1, config.min_speculative_tokens)
        self._window.append((accepted, drafted))
        rolling = sum(a for a, _ in self._window) / sum(d for _, d in self._window)
        if self.speculating and len(self._window) == self._window.maxlen and rolling < config.min_acceptance_rate:
            self.speculating = False
            return True
        return False


def _logits(model: PreTrainedModel, ids: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
    """Logits [B, n, V] (float32, CPU) for `ids` [B, n], appending their keys and values to `cache`."""
    device = next(model.parameters()).device
    return model(input_ids=ids.to(device), cache=cache, use_cache=True).logits.float().cpu()


@torch.no_grad()
def plain_generate(
    target: PreTrainedModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    params: SamplingParams,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, RequestMetrics]:
    """Non-speculative decoding with the same token choice as the verifier (`next_token`).

    Returns the new tokens [B, n] (a row that ended is padded with eos while others go on) and metrics with
    no drafts. `generator` defaults to one seeded from params.seed.
    """
    start = time.perf_counter()
    metrics = RequestMetrics()
    generator = generator if generator is not None else params.make_generator()
    cache = DynamicCache(config=target.config)
    logits = _logits(target, input_ids, cache)[:, -1]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    generated: list[torch.Tensor] = []
    while len(generated) < max_new_tokens and not done.all():
        token = next_token(logits, params, generator)  # [B]
        if eos_token_id is not None:
            token = torch.where(done, eos_token_id, token)
            done |= token == eos_token_id
        generated.append(token)
        metrics.record_step(0, 0)
        if len(generated) < max_new_tokens and not done.all():
            logits = _logits(target, token[:, None], cache)[:, -1]
    tokens = torch.stack(generated, dim=1) if generated else input_ids.new_empty(input_ids.shape[0], 0)
    metrics.num_generated_tokens = tokens.shape[1]
    metrics.verify_seconds = metrics.seconds = time.perf_counter() - start
    return tokens, metrics


@torch.no_grad()
def speculative_generate(
    target: PreTrainedModel,
    input_ids: torch.Tensor,
    drafter: DraftStrategy,
    max_new_tokens: int,
    params: SamplingParams,
    config: SpeculativeConfig,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, RequestMetrics]:
    """Draft-and-verify decoding of `input_ids` [1, T]; returns the new tokens [1, n] and the request's metrics.

    The output follows the target exactly (token for token when greedy, in distribution when sampling).
    A batch above `config.disable_by_batch_size` falls back to `plain_generate`; otherwise speculation runs
    one sequence at a time, so B must be 1.
    """
    batch = input_ids.shape[0]
    if config.disable_by_batch_size is not None and batch > config.disable_by_batch_size:
        tokens, metrics = plain_generate(target, input_ids, max_new_tokens, params, eos_token_id, generator)
        metrics.num_fallbacks += 1
        return tokens, metrics
    if batch != 1:
        raise ValueError(f"speculative decoding runs one sequence at a time, got a batch of {batch}; "
                         "set disable_by_batch_size to decode larger batches plainly")
    start = time.perf_counter()
    metrics = RequestMetrics()
    generator = generator if generator is not None else params.make_generator()
    drafter.start(params, generator)
    cache = DynamicCache(config=target.config)
    sequence = input_ids[0].cpu()
    if len(sequence) > 1:
        _logits(target, input_ids[:, :-1], cache)
    metrics.verify_seconds = time.perf_counter() - start
    schedule = DraftSchedule(config)
    generated: list[int] = []
    while len(generated) < max_new_tokens and (eos_token_id is None or eos_token_id not in generated):
        step_start = time.perf_counter()
        wanted = min(schedule.k, max_new_tokens - len(generated) - 1) if schedule.speculating else 0
        draft = drafter.propose(sequence, wanted) if wanted > 0 else None
        draft_tokens = draft.tokens.cpu() if draft is not None else sequence.new_empty(0)
        verify_start = time.perf_counter()
        metrics.draft_seconds += verify_start - step_start
        drafted = len(draft_tokens)
        logits = _logits(target, torch.cat([sequence[-1:], draft_tokens])[None], cache)[0]  # [drafted + 1, V]
        result = verify(logits, draft_tokens, draft.probs if draft is not None else None, params, generator)
        if result.accepted < drafted:
            cache.crop(result.accepted - drafted)  # drop the rejected drafts' keys and values
        metrics.verify_seconds += time.perf_counter() - verify_start
        metrics.record_step(drafted, result.accepted)
        emitted = result.tokens.tolist()
        if eos_token_id is not None and eos_token_id in emitted:
            emitted = emitted[: emitted.index(eos_token_id) + 1]
        generated.extend(emitted)
        sequence = torch.cat([sequence, torch.tensor(emitted, dtype=sequence.dtype)])
        if drafted == 0:
            continue
        if schedule.record(result.accepted, drafted):
            metrics.num_fallbacks += 1
    metrics.num_generated_tokens = len(generated)
    metrics.seconds = time.perf_counter() - start
    return torch.tensor([generated], dtype=input_ids.dtype), metrics
