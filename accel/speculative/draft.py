"""Draft strategies: cheap proposals of the next k tokens that the target model then verifies."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

from accel.schema import SpeculativeConfig


@dataclass
class Draft:
    """k proposed tokens [k]; `probs` [k, vocab] is the draft distribution q, or None for a
    deterministic drafter (verified with the one-hot rule: q(x) = 1 for the proposed x)."""

    tokens: torch.Tensor
    probs: torch.Tensor | None = None


class DraftStrategy(ABC):
    """Proposes up to k continuation tokens for a 1-D token sequence."""

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
