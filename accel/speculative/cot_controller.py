"""CoTAccelController: decode a chain-of-thought answer with fewer thinking tokens or fewer target forwards.

A request is a reasoning phase (the "thinking" tokens, capped at max_new_tokens), then the answer. When
thinking ends with EOS the answer is extracted from its text; when it is cut off (a cap, or a text with no
answer in it) the answer is forced: `answer_prompt` is appended and up to `answer_tokens` tokens are decoded
greedily. The unaccelerated baseline is plain decoding (`plain_generate`) followed by the same answer rule.

Modes (CoTConfig.mode):
- lossless: the thinking tokens come from speculative_generate (token-level draft and verify), so text
  and answer equal the baseline's exactly (greedy: token for token; sampling: in distribution).
- step_speculation (SpecReason, lossy): the draft writes the next step s_1 .. s_m up to the step delimiter;
  one target forward over the step gives log p(s_i | prefix, s_<i) for every i, and the step is kept when
      exp(mean_i log p(s_i | ...)) >= step_accept_threshold
  (the geometric-mean token probability); otherwise it is dropped from the target's cache and the target
  writes that step itself.
- early_exit (Dynasor / DEER, lossy): every probe_interval thinking tokens, the target decodes an answer
  after `answer_prompt` in a side branch (the branch's cache entries are cropped away afterwards, so the
  main sequence is untouched); once the last early_exit_agreement probed answers are equal, thinking stops
  and that answer is returned.
- budget (lossy): thinking stops after thinking_budget tokens and the answer is forced.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from accel.data.cot_tasks import CoTTask, extract_answer
from accel.schema import CoTConfig, SpeculativeConfig
from accel.speculative.decode import plain_generate, speculative_generate
from accel.speculative.draft import DraftStrategy, NGramDraft
from accel.speculative.verifier import SamplingParams, next_token
from accel.tools.speculative import chat_input_ids

Extractor = Callable[[str], int | None]


@dataclass
class CoTResult:
    """One request. `text` is the thinking text plus, when the answer was forced or probed, the answer
    prompt and the decoded answer. Saved counts are set when the result was compared with a baseline."""

    text: str
    answer: int | None
    mode: str
    lossy: bool
    thinking_tokens: int
    answer_tokens: int
    stop_reason: str  # eos | max_new_tokens | budget | early_exit
    target_forward_passes: int
    thinking_ids: list[int] = field(default_factory=list)  # the thinking tokens, EOS excluded
    draft_forward_passes: int = 0
    draft_steps_accepted: int = 0
    draft_steps_rejected: int = 0
    step_scores: list[float] = field(default_factory=list)  # exp(mean log p) of each drafted step
    probe_answers: list[int | None] = field(default_factory=list)
    seconds: float = 0.0
    thinking_tokens_saved: int | None = None
    target_forward_passes_saved: int | None = None
    token_speculation: dict[str, Any] | None = None  # RequestMetrics of lossless mode's token speculation

    def compared_with(self, baseline: CoTResult) -> CoTResult:
        """Fill in the saved counts against the unaccelerated `baseline` of the same prompt."""
        self.thinking_tokens_saved = baseline.thinking_tokens - self.thinking_tokens
        self.target_forward_passes_saved = baseline.target_forward_passes - self.target_forward_passes
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ModeSummary:
    """One mode over a task list. Agreement is with the baseline's answers, accuracy with the known ones;
    the saved percentages are of the baseline's totals: 100 (1 - sum(mode) / sum(baseline))."""

    mode: str
    lossy: bool
    tasks: int
    answer_agreement: float
    accuracy: float
    mean_thinking_tokens: float
    thinking_tokens_saved_pct: float
    mean_target_forward_passes: float
    target_forward_passes_saved_pct: float
    draft_steps_accepted: int
    draft_steps_rejected: int
    seconds: float
    results: list[CoTResult] = field(repr=False)

    def row(self) -> dict[str, Any]:
        """The summary without the per-task results (a table row)."""
        return {k: v for k, v in asdict(self).items() if k != "results"}


class _Decoder:
    """One model's KV cache over `tokens`, and `logits` [V] (float32, CPU) for the token after them."""

    def __init__(self, model: PreTrainedModel, tokens: list[int]) -> None:
        self.model = model
        self.cache = DynamicCache(config=model.config)
        self.tokens: list[int] = []
        self.forwards = 0
        self.feed(tokens)

    def feed(self, tokens: list[int]) -> torch.Tensor:
        """Append `tokens` (one forward); returns their rows of logits [n, V], row i predicting token i+1."""
        device = next(self.model.parameters()).device
        out = self.model(input_ids=torch.tensor([tokens], device=device), cache=self.cache, use_cache=True)
        rows = out.logits[0].float().cpu()
        self.forwards += 1
        self.tokens += tokens
        self.logits = rows[-1]
        return rows

    def mark(self) -> tuple[int, torch.Tensor]:
        return len(self.tokens), self.logits

    def rewind(self, mark: tuple[int, torch.Tensor]) -> None:
        """Drop every token after `mark` from the sequence and the cache (no forward needed)."""
        length, logits = mark
        self.cache.crop(length - len(self.tokens))
        del self.tokens[length:]
        self.logits = logits

    def sync(self, tokens: list[int]) -> None:
        """Make the cache cover exactly `tokens`, keeping the common prefix and feeding the rest."""
        keep = 0
        limit = min(len(self.tokens), len(tokens))
        while keep < limit and self.tokens[keep] == tokens[keep]:
            keep += 1
        if keep == len(self.tokens) == len(tokens):
            return
        keep = min(keep, len(tokens) - 1)  # feed at least one token to get fresh logits
        self.rewind((keep, self.logits))
        self.feed(tokens[keep:])


@dataclass
class _Thinking:
    """What the reasoning phase produced, before the answer."""

    tokens: list[int]
    stop_reason: str
    target_forwards: int
    decoder: _Decoder | None = None  # the target's cache over prompt + tokens, when one exists
    draft_forwards: int = 0
    accepted: int = 0
    rejected: int = 0
    step_scores: list[float] = field(default_factory=list)
    probe_answers: list[int | None] = field(default_factory=list)
    probe: tuple[list[int], str] | None = None  # the agreeing probe's answer tokens and text (early exit)
    token_speculation: dict[str, Any] | None = None


class CoTAccelController:
    """Chain-of-thought acceleration for one target model (see the module docstring for the modes).

    `draft` is a causal LM sharing the target's tokenizer (the target with layers skipped, a quantized copy,
    or a smaller model) that writes steps in step speculation. Lossless mode verifies tokens from
    `token_drafter` (default: prompt lookup), with the draft lengths of `speculative`. `extract` turns a text
    into its answer (default: the last integer on the 'Answer:' line, else the last integer).
    """

    def __init__(
        self,
        target: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        draft: PreTrainedModel | None = None,
        config: CoTConfig | None = None,
        *,
        speculative: SpeculativeConfig | None = None,
        token_drafter: DraftStrategy | None = None,
        extract: Extractor = extract_answer,
    ) -> None:
        self.target, self.tokenizer, self.draft = target, tokenizer, draft
        self.config = config or CoTConfig()
        self.speculative = speculative or SpeculativeConfig()
        self.token_drafter = token_drafter or NGramDraft.from_config(self.speculative)
        self.extract = extract
        self.eos = tokenizer.eos_token_id
        self._check(self.config)

    def _check(self, config: CoTConfig) -> None:
        if "step_speculation" in config.mode and self.draft is None:
            raise ValueError("mode 'step_speculation' needs a draft model: pass draft= (e.g. layer_skip_model("
                             "target, skip) or a quantized copy of the target); through AccelController, set "
                             "speculative.strategy to layer_skip, self_quant or draft_model")

    @torch.no_grad()
    def baseline(self, input_ids: torch.Tensor, config: CoTConfig | None = None) -> CoTResult:
        """The unaccelerated run: plain decoding of the thinking, then the same answer rule as every mode."""
        config = config or self.config
        start = time.perf_counter()
        tokens, metrics = plain_generate(self.target, input_ids, config.max_new_tokens, self._params(config),
                                         self.eos)
        thinking = self._ended(tokens[0].tolist(), metrics.steps)  # one forward per token, prefill included
        return self._answer(input_ids, thinking, config, "baseline", lossy=False, start=start)

    @torch.no_grad()
    def generate(
        self, input_ids: torch.Tensor, config: CoTConfig | None = None, baseline: CoTResult | None = None
    ) -> CoTResult:
        """Decode `input_ids` [1, T] with `config` (default: the controller's); with a `baseline` result for
        the same prompt, the result also reports the thinking tokens and target forwards saved."""
        config = config or self.config
        self._check(config)
        if input_ids.shape[0] != 1:
            raise ValueError(f"CoT acceleration decodes one sequence at a time, got a batch of {input_ids.shape[0]}")
        start = time.perf_counter()
        thinking = self._lossless(input_ids, config) if not config.lossy else self._think(input_ids, config)
        result = self._answer(input_ids, thinking, config, config.label, lossy=config.lossy, start=start)
        return result.compared_with(baseline) if baseline is not None else result

    def _params(self, config: CoTConfig) -> SamplingParams:
        return SamplingParams(temperature=config.temperature, seed=config.seed)

    def _ended(self, tokens: list[int], forwards: int) -> _Thinking:
        """Thinking from a generate loop's tokens, which end with EOS (dropped) or at max_new_tokens."""
        if self.eos is not None and tokens and tokens[-1] == self.eos:
            return _Thinking(tokens[:-1], "eos", forwards)
        return _Thinking(tokens, "max_new_tokens", forwards)

    def _lossless(self, input_ids: torch.Tensor, config: CoTConfig) -> _Thinking:
        tokens, metrics = speculative_generate(self.target, input_ids, self.token_drafter, config.max_new_tokens,
                                               self._params(config), self.speculative, self.eos)
        prefill = int(input_ids.shape[1] > 1)  # speculative_generate prefills all but the last prompt token
        thinking = self._ended(tokens[0].tolist(), prefill + metrics.steps)
        thinking.token_speculation = metrics.to_dict()
        return thinking

    def _think(self, input_ids: torch.Tensor, config: CoTConfig) -> _Thinking:
        """The lossy modes' reasoning loop: advance by a step (step speculation) or by plain tokens up to the
        next probe, cap or EOS; probe after crossing each probe_interval."""
        params = self._params(config)
        generator = params.make_generator()
        prompt = input_ids[0].tolist()
        target = _Decoder(self.target, prompt)
        draft = _Decoder(self.draft, prompt) if "step_speculation" in config.mode else None
        budget = "budget" in config.mode
        cap = config.thinking_budget if budget else config.max_new_tokens
        early_exit = "early_exit" in config.mode
        state = _Thinking([], "", 0, decoder=target)
        next_probe = config.probe_interval
        while True:
            room = cap - len(state.tokens)
            if draft is not None:
                chunk = self._speculate_step(target, draft, min(room, config.max_step_tokens), config, params,
                                             generator, state)
            else:
                want = min(room, next_probe - len(state.tokens)) if early_exit else room
                chunk = self._decode(target, want, params, generator)
            state.tokens += chunk
            if chunk and chunk[-1] == self.eos:
                state.tokens.pop()
                state.stop_reason = "eos"
                break
            if len(state.tokens) >= cap:
                state.stop_reason = "budget" if budget else "max_new_tokens"
                break
            if early_exit and len(state.tokens) >= next_probe:
                while next_probe <= len(state.tokens):
                    next_probe += config.probe_interval
                mark = target.mark()
                answer_ids, answer_text = self._decode_answer(target, config)
                target.rewind(mark)
                state.probe_answers.append(self.extract(config.answer_prompt + answer_text))
                recent = state.probe_answers[-config.early_exit_agreement :]
                if len(recent) == config.early_exit_agreement and recent[0] is not None and len(set(recent)) == 1:
                    state.stop_reason, state.probe = "early_exit", (answer_ids, answer_text)
                    break
        state.target_forwards = target.forwards
        state.draft_forwards = draft.forwards if draft is not None else 0
        return state

    def _decode(
        self, decoder: _Decoder, n: int, params: SamplingParams, generator: torch.Generator,
        delimiter: str | None = None,
    ) -> list[int]:
        """Up to n tokens from `decoder`, each fed back; stops after EOS (not fed) or, with a delimiter, once
        the text has one after some content."""
        tokens: list[int] = []
        while len(tokens) < n:
            token = int(next_token(decoder.logits, params, generator))
            tokens.append(token)
            if token == self.eos:
                break
            decoder.feed([token])
            if delimiter is not None and delimiter in self.tokenizer.decode(tokens).lstrip():
                break
        return tokens

    def _speculate_step(
        self, target: _Decoder, draft: _Decoder, limit: int, config: CoTConfig, params: SamplingParams,
        generator: torch.Generator, state: _Thinking,
    ) -> list[int]:
        """One reasoning step: the draft's when the target scores it high enough, else the target's own."""
        draft.sync(target.tokens)
        step = self._decode(draft, limit, params, generator, config.step_delimiter)  # s_1 .. s_m
        mark = target.mark()
        fed = step[:-1] if step[-1] == self.eos else step  # EOS is scored but never fed
        rows = target.feed(fed) if fed else mark[1][None, :0]  # row i predicts s_{i+2}; mark's logits predict s_1
        predicting = torch.cat([mark[1][None], rows])[: len(step)]  # [m, V], row i -> s_{i+1}
        log_probs = torch.log_softmax(predicting, dim=-1)
        score = float(log_probs.gather(-1, torch.tensor(step)[:, None]).mean().exp())
        state.step_scores.append(score)
        if score >= config.step_accept_threshold:
            state.accepted += 1
            return step
        state.rejected += 1
        target.rewind(mark)
        return self._decode(target, limit, params, generator, config.step_delimiter)

    def _decode_answer(self, decoder: _Decoder, config: CoTConfig) -> tuple[list[int], str]:
        """Append the answer prompt and decode the answer greedily: up to answer_tokens, stopping at EOS or
        a line break after content."""
        decoder.feed(self.tokenizer(config.answer_prompt, add_special_tokens=False)["input_ids"])
        tokens: list[int] = []
        text = ""
        for i in range(config.answer_tokens):
            token = int(decoder.logits.argmax())
            if token == self.eos:
                break
            tokens.append(token)
            text = self.tokenizer.decode(tokens)
            if "\n" in text.lstrip() or i == config.answer_tokens - 1:
                break
            decoder.feed([token])
        return tokens, text

    def _answer(
        self, input_ids: torch.Tensor, thinking: _Thinking, config: CoTConfig, mode: str, lossy: bool, start: float
    ) -> CoTResult:
        """Turn the thinking into a result: the probed answer (early exit), the answer in a text that ended
        with EOS, or a forced answer after answer_prompt."""
        text = self.tokenizer.decode(thinking.tokens)
        forwards = thinking.target_forwards
        answer = self.extract(text) if thinking.stop_reason == "eos" else None
        answer_ids: list[int] = []
        if thinking.probe is not None:
            answer_ids, answer_text = thinking.probe
            answer = thinking.probe_answers[-1]
            text += config.answer_prompt + answer_text
        elif answer is None:
            decoder = thinking.decoder
            if decoder is None:  # the thinking came from a generate loop whose cache is gone
                decoder = _Decoder(self.target, input_ids[0].tolist() + thinking.tokens)
                forwards += 1
            before = decoder.forwards
            answer_ids, answer_text = self._decode_answer(decoder, config)
            forwards += decoder.forwards - before
            text += config.answer_prompt + answer_text
            answer = self.extract(config.answer_prompt + answer_text)
        return CoTResult(
            text=text, answer=answer, mode=mode, lossy=lossy, thinking_tokens=len(thinking.tokens),
            answer_tokens=len(answer_ids), stop_reason=thinking.stop_reason, target_forward_passes=forwards,
            thinking_ids=thinking.tokens,
            draft_forward_passes=thinking.draft_forwards, draft_steps_accepted=thinking.accepted,
            draft_steps_rejected=thinking.rejected, step_scores=thinking.step_scores,
            probe_answers=thinking.probe_answers,
            seconds=time.perf_counter() - start, token_speculation=thinking.token_speculation,
        )

    def mode_config(self, mode: str | Sequence[str]) -> CoTConfig:
        """The controller's config with `mode` replaced (thinking_budget kept only where 'budget' is in it)."""
        modes = mode.split("+") if isinstance(mode, str) else list(mode)
        data = {**self.config.to_dict(), "mode": modes}
        if "budget" not in modes:
            data["thinking_budget"] = None
        return CoTConfig.model_validate(data)

    def evaluate(
        self, tasks: Sequence[CoTTask], modes: Sequence[str | Sequence[str] | CoTConfig],
        progress: Callable[[str], None] | None = None,
    ) -> dict[str, ModeSummary]:
        """Run the baseline and each mode on every task (prompted through the chat template); returns the
        summaries keyed by mode label, the baseline first. The baseline runs with the controller's config, and
        mode strings take its other settings (see mode_config)."""
        configs = [m if isinstance(m, CoTConfig) else self.mode_config(m) for m in modes]
        for config in configs:
            self._check(config)
        results: dict[str, list[CoTResult]] = {"baseline": []}
        results.update({config.label: [] for config in configs})
        for i, task in enumerate(tasks):
            ids = chat_input_ids(self.tokenizer, task.prompt)
            reference = self.baseline(ids)
            results["baseline"].append(reference.compared_with(reference))
            for config in configs:
                results[config.label].append(self.generate(ids, config, baseline=reference))
            if progress is not None:
                progress(f"task {i + 1}/{len(tasks)}: expected {task.answer}, " + ", ".join(
                    f"{label} {rs[-1].answer} ({rs[-1].thinking_tokens} tok)" for label, rs in results.items()))
        lossy = {"baseline": False, **{config.label: config.lossy for config in configs}}
        return {label: _summarise(label, lossy[label], tasks, rs, results["baseline"]) for label, rs in results.items()}


def _summarise(
    mode: str, lossy: bool, tasks: Sequence[CoTTask], results: list[CoTResult], baseline: list[CoTResult]
) -> ModeSummary:
    n = len(results)
    thinking, base_thinking = sum(r.thinking_tokens for r in results), sum(r.thinking_tokens for r in baseline)
    forwards = sum(r.target_forward_passes for r in results)
    base_forwards = sum(r.target_forward_passes for r in baseline)
    return ModeSummary(
        mode=mode, lossy=lossy, tasks=n,
        answer_agreement=sum(r.answer == b.answer for r, b in zip(results, baseline, strict=True)) / n,
        accuracy=sum(r.answer == t.answer for r, t in zip(results, tasks, strict=True)) / n,
        mean_thinking_tokens=thinking / n,
        thinking_tokens_saved_pct=100.0 * (1 - thinking / base_thinking) if base_thinking else 0.0,
        mean_target_forward_passes=forwards / n,
        target_forward_passes_saved_pct=100.0 * (1 - forwards / base_forwards) if base_forwards else 0.0,
        draft_steps_accepted=sum(r.draft_steps_accepted for r in results),
        draft_steps_rejected=sum(r.draft_steps_rejected for r in results),
        seconds=sum(r.seconds for r in results),
        results=results,
    )
