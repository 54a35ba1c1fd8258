"""Batched generation on the runtime model: ragged prefill, then a static decode step (CUDA graph on GPU).

One request's path (gpt-fast's generate.py, batched):
1. prefill: prompts right-padded to [B, T], each row's length known; one forward stores every prompt's K/V in
   the static cache and gives the logits after each row's last prompt token; the first new token is sampled.
2. decode: each step feeds the B tokens just sampled ([B, 1]) at each row's own next position, appends their
   K/V and gives the next logits. Shapes and buffers are the same every step and nothing reads back to the
   host, so on CUDA the step is captured once per batch size in a CUDA graph (after warm-up on a side stream;
   optionally torch.compile'd first) and each step is one replay. Speculative decoding's verification step
   (T = k + 1 tokens per row, `step`) is captured the same way for the widths named in `step_widths`.
   The prefill itself can be captured too (`prefill_graphs`: prompt widths W, one graph per batch size and W):
   prompts are right-padded to the smallest captured W that holds them and the graph replays; a long prefill
   enqueues ~1000 launches, which on a fast card takes longer than they run (FP8's does: KERNEL_NOTES.md).
3. sampling: greedy is argmax (`vocab_argmax`: in two stages, as one reduction over a 128k vocabulary row runs in
   one thread block on CUDA, 36 us of a 2.2 ms step); otherwise p = softmax(logits / temperature) limited to the
   top_k tokens and to the smallest set of tokens whose probability reaches top_p; token = argmax(p / E), E ~ Exp(1),
   which draws token i with probability p_i (the exponential race, as gpt-fast samples without a host sync).

Rows that reach an eos keep decoding (static shapes); their tokens after the eos are dropped on the host. With
eos set, the host checks every EOS_CHECK_INTERVAL steps whether all rows are done (one sync) and stops early.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from accel.runtime.kv_cache import RuntimeKVCache
from accel.runtime.model import DecoderModel

__all__ = ["GenerationObserver", "GenerationResult", "Generator", "generate", "logits_to_probs", "sample",
           "vocab_argmax"]

EOS_CHECK_INTERVAL = 16
ARGMAX_CHUNK = 256  # vocabulary entries per first-stage reduction row
DEFAULT_MAX_SEQ = 2048
WARMUP_STEPS = 3


def logits_to_probs(
    logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """p = softmax(logits / temperature) over [..., vocab] in float32, zero outside the top_k largest and
    outside the smallest prefix of tokens (by decreasing p) whose mass reaches top_p, renormalised."""
    logits = logits.to(torch.float32) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p is not None and top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the mass before it already reaches top_p: the first token always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def vocab_argmax(x: torch.Tensor) -> torch.Tensor:
    """torch.argmax over the last dim (the first maximal index; NaN counts as the maximum), in two stages when the
    vocabulary splits into rows of ARGMAX_CHUNK: each row's (max, first index) in parallel, then the first row
    holding the overall max. On CUDA a single [B, 128256] argmax reduces each row in one thread block (36 us at
    batch 1 on an H200); the two stages take a few microseconds."""
    v = x.shape[-1]
    if v % ARGMAX_CHUNK or v < 4 * ARGMAX_CHUNK:
        return x.argmax(dim=-1)
    best, local = x.unflatten(-1, (v // ARGMAX_CHUNK, ARGMAX_CHUNK)).max(dim=-1)  # [..., rows]
    row = best.argmax(dim=-1, keepdim=True)
    return (row * ARGMAX_CHUNK + local.gather(-1, row)).squeeze(-1)


def sample(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next tokens [B] from logits [B, vocab]: argmax at temperature 0, else argmax(p / E), E ~ Exp(1)."""
    if temperature <= 0:
        return vocab_argmax(logits)
    probs = logits_to_probs(logits, temperature, top_k, top_p)
    race = torch.empty_like(probs).exponential_(1.0, generator=generator).clamp_min_(torch.finfo(torch.float32).tiny)
    return vocab_argmax(probs / race)


@dataclass
class GenerationResult:
    """New tokens per prompt (through the first eos, when one came) and the timings of the run.

    ttft_s: prompt submitted to first new token available (prefill + first sample, synchronised).
    decode_times_s: one entry per decode step (each step yields one token for every row), CUDA-event timed on
    GPU, wall clock on CPU.
    """

    tokens: list[list[int]]
    prompt_lengths: list[int]
    ttft_s: float
    decode_times_s: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens per second over the decode steps, all rows counted (nan without decode steps)."""
        total = sum(self.decode_times_s)
        return len(self.tokens) * len(self.decode_times_s) / total if total > 0 else float("nan")


class GenerationObserver(Protocol):
    """What a Generator reports to; accel.integration.metrics.ServingMetrics is one."""

    def observe_setup(self, model: DecoderModel, cache: RuntimeKVCache) -> None: ...

    def observe_generation(self, result: GenerationResult) -> None: ...


class DraftHeads(Protocol):
    """Heads that draft from the target's final-normed hidden states (speculative.medusa.MedusaHeads)."""

    num_heads: int

    def draft(self, hidden: torch.Tensor, lm_head: torch.nn.Module) -> torch.Tensor: ...


@dataclass
class _CapturedStep:
    """One (batch size, width T) step in a CUDA graph: static input tokens [B, T], logits [B, T, vocab],
    greedy tokens [B, T] and, with draft heads, their tokens [B, T, K]."""

    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor
    logits: torch.Tensor
    greedy: torch.Tensor
    heads: torch.Tensor | None


@dataclass
class _CapturedPrefill:
    """One (batch size, prompt width W) prefill in a CUDA graph: static right-padded tokens [B, W] and row
    lengths [B] in, logits after each row's last prompt token [B, vocab] and, with draft heads, their tokens
    [B, K] out."""

    graph: torch.cuda.CUDAGraph
    tokens: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor
    heads: torch.Tensor | None


class Generator:
    """Generation with a static KV cache of `max_batch` rows x `max_seq` positions on the model's device.

    cuda_graphs (default: on for CUDA) captures the decode step per batch size; compile=True runs
    torch.compile(mode="max-autotune-no-cudagraphs") on the step first. On CPU the step runs eagerly.
    step_widths: widths T > 1 whose `step` is captured too (one graph per batch size and width, at the batch's
    first prefill), for speculative verification of k drafts (T = k + 1); other widths run eagerly.
    prefill_graphs: prompt widths W (tokens per row after right padding, each <= max_seq) whose prefill is
    captured, one graph per batch size and W at the first prefill that needs it (needs cuda_graphs). A batch
    whose longest prompt has L tokens is padded to the smallest W >= L and replays that graph: bits as an eager
    prefill of that padded batch (padding sits after every row's length: causal attention never reads it, decode
    overwrites its K/V). Longer prompts run eagerly. Each graph keeps its activations in the graph pool.
    cache: a cache to decode through instead of the model's static one (e.g. kv_runtime's PagedKVCache); it sets
    max_batch, max_seq and the KV format, and CUDA graphs default to off when it is not capturable.
    metrics: an observer (accel.integration.metrics.ServingMetrics) told the model and cache once (observe_setup)
    and every generate's result (observe_generation), for Prometheus.
    draft_heads: Medusa heads (speculative.medusa) run inside every step and prefill on the final-normed hidden
    states; their argmax for the last step is `last_head_tokens` (speculative.medusa.MedusaDraft reads it).
    """

    def __init__(
        self,
        model: DecoderModel,
        *,
        max_batch: int = 1,
        max_seq: int | None = None,
        kv_format: str | None = None,
        cuda_graphs: bool | None = None,
        compile: bool = False,
        step_widths: Sequence[int] = (),
        prefill_graphs: Sequence[int] = (),
        cache: RuntimeKVCache | None = None,
        metrics: GenerationObserver | None = None,
        draft_heads: DraftHeads | None = None,
    ) -> None:
        if any(width < 2 for width in step_widths):
            raise ValueError(f"step_widths are widths T > 1 to capture besides decode (T = 1), got {list(step_widths)}")
        self.model = model
        device = model.device
        self.draft_heads = draft_heads
        self._last_heads: tuple[int, torch.Tensor] | None = None
        if cuda_graphs and device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device, it is on {device}")
        if cache is not None and kv_format is not None:
            raise ValueError("pass kv_format or cache, not both: the given cache stores K/V in its own format")
        if cuda_graphs and cache is not None and not cache.capturable:
            raise ValueError(
                f"{type(cache).__name__} syncs with the host on every step and cannot be captured in a CUDA graph; "
                "pass cuda_graphs=False"
            )
        capturable = cache is None or cache.capturable
        self.cuda_graphs = device.type == "cuda" and capturable if cuda_graphs is None else cuda_graphs
        max_seq = max_seq or min(DEFAULT_MAX_SEQ, model.args.max_position_embeddings)
        self.cache: RuntimeKVCache = cache if cache is not None else model.new_cache(max_batch, max_seq, kv_format)
        self._step = self._forward
        if compile:
            # The backends' kernels are opaque to dynamo (graph breaks), so the step compiles as one frame per
            # stretch between kernels, and each resumed frame specializes on its layer index: allow one per layer.
            limit = 4 * model.args.num_layers + 16
            torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, limit)
            torch._dynamo.config.accumulated_cache_size_limit = max(
                torch._dynamo.config.accumulated_cache_size_limit, 4 * limit
            )
            self._step = torch.compile(self._forward, mode="max-autotune-no-cudagraphs", dynamic=False)
        self.step_widths = tuple(sorted(set(step_widths)))
        self.prefill_graphs = tuple(sorted(set(prefill_graphs)))
        if self.prefill_graphs and not self.cuda_graphs:
            raise ValueError(
                "prefill_graphs needs CUDA graphs (a model on a CUDA device, a capturable cache, cuda_graphs not "
                "False); pass prefill_graphs=() to prefill eagerly"
            )
        bad = [width for width in self.prefill_graphs if not 1 <= width <= self.max_seq]
        if bad:
            raise ValueError(
                f"prefill_graphs are padded prompt widths from 1 to max_seq {self.max_seq}, got {bad}; raise "
                "max_seq or drop them"
            )
        self._graphs: dict[tuple[int, int], _CapturedStep] = {}
        self._prefills: dict[tuple[int, int], _CapturedPrefill] = {}
        self._pool = torch.cuda.graph_pool_handle() if self.cuda_graphs else None
        self._lengths: list[int] = []
        self.metrics = metrics
        if metrics is not None:
            metrics.observe_setup(model, self.cache)

    @property
    def max_batch(self) -> int:
        return self.cache.max_batch

    @property
    def max_seq(self) -> int:
        return self.cache.max_seq

    @property
    def lengths(self) -> list[int]:
        """Tokens each row of the current batch holds in the cache (prompt + tokens stepped so far)."""
        return list(self._lengths)

    # ------------------------------------------------------------------------------------------ steps

    def _forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The step that is captured: tokens [B, T] -> (logits [B, T, vocab], greedy tokens [B, T], draft heads'
        tokens [B, T, K] or None)."""
        if self.draft_heads is None:
            logits = self.model.decode(tokens, self.cache)
            return logits, vocab_argmax(logits), None
        logits, hidden = self.model.decode_hidden(tokens, self.cache)
        return logits, vocab_argmax(logits), self.draft_heads.draft(hidden, self.model.lm_head)

    def _capture_all(self, batch: int) -> None:
        """Capture the decode step and every step width for `batch` rows, those not captured yet."""
        for width in (1, *self.step_widths):
            if (batch, width) not in self._graphs:
                self._graphs[batch, width] = self._capture(batch, width)

    def _capture(self, batch: int, width: int) -> _CapturedStep:
        """Warm the step up on a side stream, then capture it. Warm-up steps write K/V at positions 0 .. width - 1
        of the first `batch` rows, so this runs before those rows are prefilled."""
        cache = self.cache.rows(batch)
        tokens = torch.zeros(batch, width, dtype=torch.long, device=self.model.device)
        stream = _warmup_stream(self.model.device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                cache.reset()
                self._step(tokens)
            cache.reset()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits, greedy, heads = self._step(tokens)
        return _CapturedStep(graph, tokens, logits, greedy, heads)

    def _prefill_forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prefill that is captured: right-padded tokens [B, W], lengths [B] -> (logits after each row's last
        prompt token [B, vocab], draft heads' tokens [B, K] or None)."""
        if self.draft_heads is None:
            return self.model.prefill(tokens, lengths, self.cache), None
        logits, hidden = self.model.prefill_hidden(tokens, lengths, self.cache)
        return logits, self.draft_heads.draft(hidden, self.model.lm_head)

    def _prefill_width(self, width: int) -> int | None:
        """The captured prompt width a batch whose longest prompt has `width` tokens pads to (None: eager)."""
        return next((captured for captured in self.prefill_graphs if captured >= width), None)

    def _prepare(self, prompts: Sequence[Sequence[int]]) -> None:
        """Capture what a batch of these prompts replays and is not captured yet: the decode step and step widths
        for its batch size, and its prefill width. Runs before the rows are prefilled (warm-ups write them)."""
        if not self.cuda_graphs:
            return
        batch = len(prompts)
        self._capture_all(batch)
        width = self._prefill_width(max(len(prompt) for prompt in prompts))
        if width is not None and (batch, width) not in self._prefills:
            self._prefills[batch, width] = self._capture_prefill(batch, width)

    def _capture_prefill(self, batch: int, width: int) -> _CapturedPrefill:
        """Warm the prefill of `batch` rows of `width` tokens up on a side stream, then capture it."""
        device = self.model.device
        tokens = torch.zeros(batch, width, dtype=torch.long, device=device)
        lengths = torch.full((batch,), width, dtype=torch.int32, device=device)
        stream = _warmup_stream(device)
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad():
            with torch.cuda.stream(stream):
                for _ in range(WARMUP_STEPS):
                    self._prefill_forward(tokens, lengths)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                logits, heads = self._prefill_forward(tokens, lengths)
        return _CapturedPrefill(graph, tokens, lengths, logits, heads)

    def _run(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One step for tokens [B, T] (any device): (logits [B, T, vocab], greedy [B, T], heads' tokens or None),
        a captured graph's replay where there is one (its outputs are overwritten by its next replay), else eager."""
        # non_blocking: a pageable host source is staged before the copy call returns, so no stream sync is needed.
        captured = self._graphs.get(tuple(tokens.shape))
        if captured is None:
            return self._step(tokens.to(self.model.device, non_blocking=True))
        captured.tokens.copy_(tokens, non_blocking=True)
        captured.graph.replay()
        return captured.logits, captured.greedy, captured.heads

    def _decode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step for tokens [B]: (logits [B, vocab], greedy [B]); graph outputs are overwritten by
        the next step."""
        logits, greedy, _ = self._run(tokens[:, None])
        return logits[:, 0], greedy[:, 0]

    # ------------------------------------------------------------------------------------------ checks

    def _check_prompts(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        if not isinstance(prompts, Sequence) or not prompts or isinstance(prompts[0], int):
            raise ValueError("prompts must be a non-empty list of token-id lists, one per row")
        if len(prompts) > self.max_batch:
            raise ValueError(
                f"batch of {len(prompts)} prompts exceeds max_batch {self.max_batch}; create the Generator with "
                f"max_batch >= {len(prompts)} or split the prompts"
            )
        vocab = self.model.args.vocab_size
        for i, prompt in enumerate(prompts):
            if len(prompt) == 0:
                raise ValueError(f"prompts[{i}] is empty; every prompt needs at least one token")
            need = len(prompt) + max_new_tokens
            if need > self.max_seq:
                raise ValueError(
                    f"prompts[{i}] has {len(prompt)} tokens: with max_new_tokens {max_new_tokens} it needs {need} "
                    f"positions, over max_seq {self.max_seq}; raise max_seq or shorten the prompt"
                )
            bad = next((tok for tok in prompt if not 0 <= int(tok) < vocab), None)
            if bad is not None:
                raise ValueError(f"prompts[{i}] holds token id {bad}, outside the vocabulary (vocab_size {vocab})")

    # ------------------------------------------------------------------------------------------ public

    def prefill(self, prompts: Sequence[Sequence[int]]) -> torch.Tensor:
        """Start a batch: run the prompts (ragged, right-padded) into cache rows 0 .. len(prompts) - 1 and
        return the logits after each prompt's last token [B, vocab]."""
        self._check_prompts(prompts, 0)
        batch = len(prompts)
        self._prepare(prompts)
        longest = max(len(prompt) for prompt in prompts)
        width = self._prefill_width(longest) or longest
        captured = self._prefills.get((batch, width))
        padded = [list(prompt) + [0] * (width - len(prompt)) for prompt in prompts]
        # Host tensors: one copy each into the graph's static inputs or onto the device.
        tokens = torch.tensor(padded, dtype=torch.long)  # [B, W]
        lengths = torch.tensor([len(prompt) for prompt in prompts], dtype=torch.int32)
        with torch.no_grad():
            if captured is None:
                device = self.model.device
                logits, drafted = self._prefill_forward(tokens.to(device), lengths.to(device))
            else:
                captured.tokens.copy_(tokens, non_blocking=True)
                captured.lengths.copy_(lengths, non_blocking=True)
                captured.graph.replay()
                # The graph's buffers are overwritten by its next replay: hand back copies.
                logits = captured.logits.clone()
                drafted = None if captured.heads is None else captured.heads.clone()
        if drafted is not None:
            # As if the last prompt token were the last step's only row (MedusaDraft reads row 0).
            self._last_heads = (len(prompts[0]) - 1, drafted[:, None])  # drafted [B, K]
        self._lengths = [len(prompt) for prompt in prompts]
        return logits

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens [B, T] after what each row of the current batch holds; logits [B, T, vocab].
        T = 1 and the `step_widths` replay their captured graphs where there are some; other widths run eagerly."""
        logits, _ = self.step_buffers(tokens)
        return logits.clone()  # a graph's output buffer is overwritten by its next replay: hand back a copy

    def step_buffers(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`step` without the copy, plus the argmax: (logits [B, T, vocab], greedy tokens [B, T]). With a captured
        graph both are its output buffers, valid until that graph's next replay. Nothing waits for the device:
        `tokens` may live on the host or on the device (e.g. a draft model's output)."""
        if tokens.ndim != 2 or tokens.shape[0] != len(self._lengths):
            raise ValueError(
                f"tokens must be [batch, T] with batch {len(self._lengths)} (the rows of the last prefill), got "
                f"shape {tuple(tokens.shape)}"
            )
        t = tokens.shape[1]
        if max(self._lengths) + t > self.max_seq:
            raise ValueError(
                f"{t} more tokens would take a row past max_seq {self.max_seq} (row lengths {self._lengths})"
            )
        start = self._lengths[0]
        with torch.no_grad():
            logits, greedy, heads = self._run(tokens.long())
        if heads is not None:
            self._last_heads = (start, heads)
        self._lengths = [length + t for length in self._lengths]
        return logits, greedy

    @property
    def last_head_tokens(self) -> tuple[int, torch.Tensor]:
        """(row 0's cache length before the last step or prefill's last token, the draft heads' tokens of that
        step [B, T, K]); valid until the next step."""
        if self._last_heads is None:
            raise ValueError("no step has run draft heads yet: build the Generator with draft_heads and prefill")
        return self._last_heads

    def rewind(self, lengths: Sequence[int]) -> None:
        """Shorten rows to `lengths` tokens (dropping rejected draft tokens); later steps overwrite the rest."""
        if len(lengths) != len(self._lengths) or any(
            not 1 <= new <= old for new, old in zip(lengths, self._lengths, strict=True)
        ):
            raise ValueError(f"lengths {list(lengths)} must give each row 1 .. its current length {self._lengths}")
        seq_lens = torch.tensor(list(lengths), dtype=torch.int32)
        self.cache.rows(len(lengths)).seq_lens.copy_(seq_lens, non_blocking=True)  # staged at once: no sync
        self._lengths = list(lengths)

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        max_new_tokens: int,
        *,
        temperature: float = 0.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        eos: int | Sequence[int] | None = None,
    ) -> GenerationResult:
        """Generate up to max_new_tokens tokens for each prompt (token-id lists, ragged; batch <= max_batch).
        temperature 0 is greedy; `seed` makes sampling reproducible; `eos` ends a row (kept in its tokens)."""
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        self._check_prompts(prompts, max_new_tokens)
        batch, device = len(prompts), self.model.device
        self._prepare(prompts)  # before the clock starts: capture is set-up, not TTFT
        generator = None if seed is None else torch.Generator(device=device).manual_seed(seed)
        eos_ids = None if eos is None else torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)

        def pick(logits: torch.Tensor, greedy: torch.Tensor | None = None) -> torch.Tensor:
            if temperature <= 0 and greedy is not None:
                return greedy
            return sample(logits, temperature, top_k, top_p, generator)

        out = torch.empty(batch, max_new_tokens, dtype=torch.long, device=device)
        start = time.perf_counter()
        token = pick(self.prefill(prompts))  # [B]
        out[:, 0] = token
        _synchronize(device)
        ttft = time.perf_counter() - start
        done = None if eos_ids is None else torch.isin(token, eos_ids)
        timer = _StepTimer(device)
        steps = 1
        with torch.no_grad():
            while steps < max_new_tokens:
                if done is not None and steps % EOS_CHECK_INTERVAL == 0 and bool(done.all()):
                    break
                token = pick(*self._decode(token))
                out[:, steps] = token
                timer.mark()
                steps += 1
                if done is not None:
                    done |= torch.isin(token, eos_ids)
        self._lengths = [length + steps - 1 for length in self._lengths]
        rows = out[:, :steps].tolist()
        if eos_ids is not None:
            stops = set(eos_ids.tolist())
            rows = [row[: next((i + 1 for i, tok in enumerate(row) if tok in stops), len(row))] for row in rows]
        result = GenerationResult(rows, [len(prompt) for prompt in prompts], ttft, timer.times())
        if self.metrics is not None:
            self.metrics.observe_generation(result)
        return result


@functools.cache
def _warmup_stream(device: torch.device) -> torch.cuda.Stream:
    """The side stream every capture warms up on, one per device: cuBLAS keeps a workspace per stream it ran on,
    held for the process's life, so a fresh stream per capture would grow memory with every Generator."""
    return torch.cuda.Stream(device=device)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _StepTimer:
    """Per-step times without a host sync per step: CUDA events on GPU, read at the end; wall clock on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[float | torch.cuda.Event] = []
        self.mark()

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def times(self) -> list[float]:
        if self.cuda:
            if self.marks:
                self.marks[-1].synchronize()  # type: ignore[union-attr]
            return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self.marks)]  # type: ignore[union-attr]
        return [b - a for a, b in itertools.pairwise(self.marks)]  # type: ignore[operator]


def generate(
    model: DecoderModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    eos: int | Sequence[int] | None = None,
    kv_format: str | None = None,
    cuda_graphs: bool | None = None,
    compile: bool = False,
) -> GenerationResult:
    """One-off generation: a Generator sized to these prompts (max_batch = their number, max_seq = longest
    prompt + max_new_tokens), then Generator.generate."""
    longest = max((len(prompt) for prompt in prompts), default=0)
    generator = Generator(
        model,
        max_batch=max(1, len(prompts)),
        max_seq=max(1, longest + max_new_tokens),
        kv_format=kv_format,
        cuda_graphs=cuda_graphs,
        compile=compile,
    )
    return generator.generate(
        prompts, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, eos=eos
    )
