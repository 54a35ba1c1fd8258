"""Speculative decoding metrics per request and in total, named as vLLM's spec-decode metrics.

Definitions (a "draft step" is one verify step that drafted at least one token):
- acceptance_rate = num_accepted_tokens / num_drafted_tokens.
- mean_accepted_length = 1 + num_accepted_tokens / num_drafts: the tokens each draft step emits, counting
  the correction or bonus token, as vLLM reports its "mean acceptance length" (1.0 = no speed-up).
- per_position_acceptance[i] = accepted_at[i] / drafted_at[i]: of the draft steps that proposed a token at
  position i, the fraction that accepted it. (vLLM divides by num_drafts instead; with a fixed draft length
  the two agree.)
- num_fallbacks counts switches to plain decoding (kill switch, batch size over disable_by_batch_size).
- tokens_per_second = num_generated_tokens / seconds (wall time of the whole request, prefill included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class RequestMetrics:
    """Counters of one request (or, summed, of many: see AggregateMetrics)."""

    num_drafts: int = 0
    num_drafted_tokens: int = 0
    num_accepted_tokens: int = 0
    num_generated_tokens: int = 0
    num_fallbacks: int = 0
    steps: int = 0
    draft_seconds: float = 0.0
    verify_seconds: float = 0.0
    seconds: float = 0.0
    drafted_at: list[int] = field(default_factory=list)
    accepted_at: list[int] = field(default_factory=list)

    def record_step(self, drafted: int, accepted: int) -> None:
        """Count one verify step that proposed `drafted` tokens and kept the first `accepted` of them."""
        self.steps += 1
        if drafted == 0:
            return
        self.num_drafts += 1
        self.num_drafted_tokens += drafted
        self.num_accepted_tokens += accepted
        grow = drafted - len(self.drafted_at)
        if grow > 0:
            self.drafted_at.extend([0] * grow)
            self.accepted_at.extend([0] * grow)
        for i in range(drafted):
            self.drafted_at[i] += 1
            self.accepted_at[i] += int(i < accepted)

    @property
    def acceptance_rate(self) -> float:
        return self.num_accepted_tokens / self.num_drafted_tokens if self.num_drafted_tokens else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 1.0

    @property
    def per_position_acceptance(self) -> list[float]:
        return [accepted / drafted for accepted, drafted in zip(self.accepted_at, self.drafted_at, strict=True)]

    @property
    def tokens_per_second(self) -> float:
        return self.num_generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "num_drafts": self.num_drafts,
            "num_drafted_tokens": self.num_drafted_tokens,
            "num_accepted_tokens": self.num_accepted_tokens,
            "num_generated_tokens": self.num_generated_tokens,
            "acceptance_rate": self.acceptance_rate,
            "mean_accepted_length": self.mean_accepted_length,
            "per_position_acceptance": self.per_position_acceptance,
            "num_fallbacks": self.num_fallbacks,
            "steps": self.steps,
            "draft_seconds": self.draft_seconds,
            "verify_seconds": self.verify_seconds,
            "seconds": self.seconds,
            "tokens_per_second": self.tokens_per_second,
        }


@dataclass
class AggregateMetrics(RequestMetrics):
    """Totals over requests: counters and times summed, rates recomputed from the sums (token-weighted)."""

    num_requests: int = 0

    def add(self, request: RequestMetrics) -> None:
        self.num_requests += 1
        for name in ("num_drafts", "num_drafted_tokens", "num_accepted_tokens", "num_generated_tokens",
                     "num_fallbacks", "steps", "draft_seconds", "verify_seconds", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(request, name))
        for totals, counts in ((self.drafted_at, request.drafted_at), (self.accepted_at, request.accepted_at)):
            totals.extend([0] * (len(counts) - len(totals)))
            for i, count in enumerate(counts):
                totals[i] += count

    def to_dict(self) -> dict[str, Any]:
        return {"num_requests": self.num_requests, **super().to_dict()}
