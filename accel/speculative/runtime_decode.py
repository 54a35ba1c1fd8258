"""Draft-and-verify decoding on the accel runtime (batch 1), every step a CUDA graph replay on a GPU.

decode.py's loop on a runtime Generator. One round, with the target's static KV cache holding every token but
the last emitted one, t:
  1. the drafter proposes d_1 .. d_n, n <= k: prompt lookup on the host, or a draft model on its own Generator
     (RuntimeModelDraft: greedy, each step's argmax feeds the next step on the device, no host round trip);
  2. one target step over [t, d_1 .. d_n, padding] of fixed width k + 1 (captured once, like the T = 1 decode
     step) gives k + 1 rows of logits and their argmax; row i follows d_1 .. d_i. The padding sits after the
     real tokens, so causal attention keeps it out of rows 0 .. n, and step 4 drops its K/V;
  3. the verifier keeps d_1 .. d_a and adds one correction or bonus token. Greedy: the argmax of rows 0 .. n
     (with a device draft's tokens) reaches the host in one copy, the round's only sync, and verifier.verify's
     greedy rule runs on those ids; sampling: verifier.verify on the rows' logits and the draft's q;
  4. the target cache is rewound to hold t, d_1 .. d_a; the last emitted token is the next round's t.
A round without a draft is one plain T = 1 decode step. Draft length and the kill switch are decode's
DraftSchedule (capped at k, the captured width); metrics are decode's RequestMetrics, named as vLLM names them.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.plugins.registry import PluginRegistry, get_registry
from accel.runtime.generate import Generator
from accel.runtime.model import DecoderModel, from_hf
from accel.schema import SpeculativeConfig
from accel.speculative.decode import DraftSchedule
from accel.speculative.draft import Draft, DraftStrategy
from accel.speculative.metrics import RequestMetrics
from accel.speculative.verifier import SamplingParams, VerifyResult, logits_to_probs, next_token, sample, verify

__all__ = [
    "RuntimeModelDraft",
    "greedy_verify",
    "layer_subset",
    "self_quant_draft_model",
    "speculative_generate_runtime",
]

DEFAULT_DRAFT_PRESET = "w4a16-rtn"


# ---------------------------------------------------------------------------------------------- draft models


def layer_subset(model: DecoderModel, layers: Sequence[int]) -> DecoderModel:
    """A draft view of `model` that runs only `layers` (the others pass the residual stream through unchanged):
    range(n) truncates it to its first n layers, draft.default_skip_layers' complement skips layers. Weights are
    shared; kept layers keep their cache index, so the view's caches still have a slot for every layer."""
    keep = list(layers)
    if not keep or keep != sorted(set(keep)) or not 0 <= keep[0] <= keep[-1] < model.args.num_layers:
        raise ValueError(
            f"layers must be increasing, distinct layer indices in 0..{model.args.num_layers - 1}, got {keep}"
        )
    view = DecoderModel(
        model.args,
        model.embed_weight,
        [model.layers[i] for i in keep],
        model.norm,
        model.lm_head,
        model.kernels,
        model.kv_format,
    )
    view.tokenizer = model.tokenizer
    return view.eval()


def self_quant_draft_model(
    hf_model: PreTrainedModel,
    preset: str = DEFAULT_DRAFT_PRESET,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    registry: PluginRegistry | None = None,
) -> DecoderModel:
    """The target quantized with the `preset` (accel.tools.presets, e.g. "w4a16-rtn" or "w8a16") as a runtime
    model whose W4A16 / W8 layers run the kernels the registry picks. `hf_model` is left as it is; round-to-nearest
    presets need no calibration data, others need the `tokenizer`."""
    from accel.quantization.pipeline import quantize_model  # the quantization stack loads only when asked for
    from accel.tools.presets import get_preset

    registry = registry or get_registry()
    draft = copy.deepcopy(hf_model)
    quantize_model(draft, tokenizer, get_preset(preset).quantization, registry, progress=False)  # type: ignore[arg-type]
    return from_hf(draft, dtype=dtype, device=device, registry=registry)


class RuntimeModelDraft(DraftStrategy):
    """A runtime model drafts on its own Generator (batch 1): the target's self-quantized copy, a layer subset
    of it, or a small model sharing its tokenizer.

    Greedy: each step's argmax feeds the next step on the device (captured T = 1 graphs on a GPU) and the k
    tokens stay there (Draft.tokens is a device tensor that the target's step reads directly), so proposing
    costs no host sync; their host copy is read at the next proposal. Sampling: each step's
    q = logits_to_probs(logits, params) comes to the host, x ~ q is drawn with the request's generator, and
    q [k, V] is returned for exact verification.

    The draft cache holds the tokens of the previous proposal's sequence and its first k - 1 drafts; a proposal
    rewinds it to the common prefix with the new sequence (dropping rejected drafts) and feeds the rest: one
    token after a rejection, two (the last draft, then the bonus) after a full acceptance, so width 2 is
    captured too.
    """

    def __init__(self, model: DecoderModel, *, max_seq: int | None = None, cuda_graphs: bool | None = None) -> None:
        self.model = model
        self.generator = Generator(model, max_batch=1, max_seq=max_seq, cuda_graphs=cuda_graphs, step_widths=(2,))
        self.params = SamplingParams()
        self.rng: torch.Generator | None = None
        self._cached: list[int] = []
        self._unread: tuple[torch.Tensor, torch.cuda.Event | None] | None = None  # device drafts the cache holds

    def start(self, params: SamplingParams, generator: torch.Generator | None) -> None:
        self.params, self.rng = params, generator
        self._cached, self._unread = [], None

    def _cached_tokens(self) -> list[int]:
        """The tokens the draft cache holds, the last greedy proposal's included (copied to the host as it ran)."""
        if self._unread is not None:
            host, copied = self._unread
            if copied is not None:
                copied.synchronize()  # done already when the target's round has synced since
            self._cached += host.tolist()
            self._unread = None
        return self._cached

    @torch.no_grad()
    def _feed(self, seq: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bring the cache to `seq` [: -1] plus its last token; (logits [V], argmax []) after the last token."""
        cached = self._cached_tokens()
        keep, limit = 0, min(len(cached), len(seq) - 1)
        while keep < limit and cached[keep] == seq[keep]:
            keep += 1
        generator = self.generator
        self._cached = list(seq)
        if keep == 0:
            logits = generator.prefill([seq])[0]  # [V]
            return logits, logits.argmax(-1)
        generator.rewind([keep])
        logits, greedy = generator.step_buffers(torch.tensor([seq[keep:]]))  # [1, T, V], [1, T]
        return logits[0, -1], greedy[0, -1]

    @torch.no_grad()
    def propose(self, tokens: torch.Tensor, k: int) -> Draft:
        vocab = self.model.args.vocab_size
        if k == 0 or len(tokens) == 0:
            return Draft(tokens.new_empty(0), None if self.params.greedy else torch.empty(0, vocab))
        logits, greedy = self._feed(tokens.tolist())
        if not self.params.greedy:
            return self._propose_sampled(logits, k)
        device = self.model.device
        drafted = torch.empty(k, dtype=torch.long, device=device)
        drafted[0] = greedy
        for i in range(1, k):
            _, greedy_next = self.generator.step_buffers(drafted[i - 1 : i].view(1, 1))
            drafted[i] = greedy_next[0, 0]
        fed = drafted[: k - 1]  # the cache holds these; drafted[k - 1] is fed next time, if accepted
        if device.type == "cuda":
            host = torch.empty(k - 1, dtype=torch.long, pin_memory=True)
            host.copy_(fed, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            self._unread = (host, event)
        else:
            self._unread = (fed.clone(), None)
        return Draft(tokens=drafted)

    def _propose_sampled(self, logits: torch.Tensor, k: int) -> Draft:
        proposed: list[int] = []
        probs: list[torch.Tensor] = []
        for i in range(k):
            q = logits_to_probs(logits.float().cpu(), self.params)  # [V]
            proposed.append(int(sample(q, self.rng)))
            probs.append(q)
            if i < k - 1:
                logits = self.generator.step_buffers(torch.tensor([[proposed[-1]]]))[0][0, -1]
        self._cached += proposed[:-1]
        return Draft(tokens=torch.tensor(proposed), probs=torch.stack(probs))


# ---------------------------------------------------------------------------------------------- the loop


def greedy_verify(target_choice: Sequence[int], drafted: Sequence[int]) -> VerifyResult:
    """verifier.verify's greedy rule on the target's argmax ids [n + 1] (computed on the device, so that only the
    ids reach the host): keep drafts while each equals the target's choice at its position, then emit the
    choice at the first mismatch, or the bonus choice after all n."""
    accepted = 0
    while accepted < len(drafted) and drafted[accepted] == target_choice[accepted]:
        accepted += 1
    return VerifyResult(accepted, len(drafted), torch.tensor([*drafted[:accepted], target_choice[accepted]]))


class _Phases:
    """Draft and verify time of a request: CUDA events on a GPU (read once, at the end, so timing adds no host
    sync), the wall clock on CPU. Each `close` ends the span that began at the previous one."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.spans: dict[str, list[tuple[object, object]]] = {"draft": [], "verify": []}
        self._last = self._now()

    def _now(self) -> object:
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def close(self, phase: str) -> None:
        now = self._now()
        self.spans[phase].append((self._last, now))
        self._last = now

    def seconds(self, phase: str) -> float:
        if self.cuda:
            torch.cuda.synchronize()
            return sum(a.elapsed_time(b) for a, b in self.spans[phase]) / 1e3  # type: ignore[attr-defined]
        return sum(b - a for a, b in self.spans[phase])  # type: ignore[operator]


def _prompt_list(prompt_ids: torch.Tensor | Sequence[int]) -> list[int]:
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.ndim == 2 and prompt_ids.shape[0] != 1:
            raise ValueError(f"speculative decoding runs one sequence at a time, got a batch of {prompt_ids.shape[0]}")
        prompt = prompt_ids.reshape(-1).tolist()
    else:
        prompt = [int(token) for token in prompt_ids]
    if not prompt:
        raise ValueError("prompt_ids is empty; speculative decoding needs at least one prompt token")
    return prompt


def _target_generator(target: Generator | DecoderModel, need: int, width: int) -> Generator:
    if isinstance(target, DecoderModel):
        return Generator(target, max_batch=1, max_seq=need, step_widths=(width,))
    if target.max_seq < need:
        raise ValueError(
            f"the target Generator's max_seq {target.max_seq} is below the {need} positions this request needs "
            f"(prompt + max_new_tokens + k - 1); create it with max_seq >= {need}"
        )
    return target


@torch.no_grad()
def speculative_generate_runtime(
    target: Generator | DecoderModel,
    prompt_ids: torch.Tensor | Sequence[int],
    max_new_tokens: int,
    strategy: DraftStrategy,
    *,
    k: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = None,
    eos_token_id: int | None = None,
    config: SpeculativeConfig | None = None,
) -> tuple[torch.Tensor, RequestMetrics]:
    """Draft-and-verify decoding of one prompt on the runtime; returns the new tokens [1, n] (through the first
    eos) and the request's metrics. The output follows the target exactly: token for token plain greedy decoding
    at temperature 0 (up to the floating-point differences between a width-(k+1) step and k+1 single steps),
    in distribution otherwise.

    `target` is a Generator (give it step_widths=(k + 1,) so verification replays a CUDA graph, and max_seq >=
    prompt + max_new_tokens + k - 1) or a DecoderModel (a Generator is made for this call). `strategy` drafts:
    NGramDraft, RuntimeModelDraft, or any DraftStrategy. `k` is the most tokens a round drafts and fixes the
    verification width k + 1; `config` adds decode's dynamic draft length and kill switch (k stays the cap).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if k < 1:
        raise ValueError(f"k must be at least 1 (the most tokens a round drafts), got {k}")
    prompt = _prompt_list(prompt_ids)
    width = k + 1
    generator = _target_generator(target, len(prompt) + max_new_tokens + k - 1, width)
    device = generator.model.device
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    schedule = DraftSchedule(config or SpeculativeConfig(num_speculative_tokens=k, dynamic_draft_length=False))
    rng = params.make_generator()
    strategy.start(params, rng)
    metrics = RequestMetrics()
    start = time.perf_counter()
    phases = _Phases(device)
    logits = generator.prefill([prompt])  # [1, V]; the cache holds the prompt
    first = int(logits[0].argmax()) if params.greedy else int(next_token(logits[0].float().cpu(), params, rng))
    phases.close("verify")
    generated, seq = [first], [*prompt, first]
    while len(generated) < max_new_tokens and generated[-1] != eos_token_id:
        wanted = min(schedule.k, k, max_new_tokens - len(generated) - 1) if schedule.speculating else 0
        draft = strategy.propose(torch.tensor(seq), wanted) if wanted > 0 else None
        drafts = torch.empty(0, dtype=torch.long) if draft is None else draft.tokens[:wanted]
        n = len(drafts)
        phases.close("draft")
        if n == 0:
            inputs = torch.tensor([[seq[-1]]])
        elif drafts.device.type == "cpu":
            inputs = torch.tensor([[seq[-1], *drafts.tolist(), *[0] * (width - 1 - n)]])
        else:  # a device draft goes into the step without visiting the host
            inputs = torch.zeros(1, width, dtype=torch.long, device=device)
            inputs[0, 0] = seq[-1]
            inputs[0, 1 : n + 1] = drafts
        step_logits, step_greedy = generator.step_buffers(inputs)  # [1, T, V], [1, T]
        if params.greedy:
            ids = step_greedy[0, : n + 1]
            ids = (ids if drafts.device.type == "cpu" else torch.cat([ids, drafts])).tolist()  # the round's sync
            drafted = ids[n + 1 :] if drafts.device.type != "cpu" else drafts.tolist()
            result = greedy_verify(ids[: n + 1], drafted)
        else:
            q = None if draft is None or draft.probs is None else draft.probs[:n]
            result = verify(step_logits[0, : n + 1].float().cpu(), drafts.cpu(), q, params, rng)
        generator.rewind([len(seq) + result.accepted])  # the cache holds t, d_1 .. d_a
        phases.close("verify")
        metrics.record_step(n, result.accepted)
        emitted = result.tokens.tolist()
        if eos_token_id is not None and eos_token_id in emitted:
            emitted = emitted[: emitted.index(eos_token_id) + 1]
        generated += emitted
        seq += emitted
        if n and schedule.record(result.accepted, n):
            metrics.num_fallbacks += 1
    metrics.num_generated_tokens = len(generated)
    metrics.seconds = time.perf_counter() - start
    metrics.draft_seconds, metrics.verify_seconds = phases.seconds("draft"), phases.seconds("verify")
    return torch.tensor([generated], dtype=torch.long), metrics
