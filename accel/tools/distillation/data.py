"""Training batches: fixed-length token windows at seeded random offsets in a token stream.

Batch s is a pure function of (seed, s), so a run resumed at step s sees exactly the batches an
uninterrupted run would have, with no data-loader state to checkpoint.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from accel.data.corpus import load_text_source, tokenize
from accel.errors import CorpusError


class TokenWindows:
    """`batch_size` windows of `seq_len` tokens of `tokens` [N] per step."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0) -> None:
        if tokens.ndim != 1 or not 1 <= seq_len <= tokens.numel():
            raise CorpusError(f"need a 1-D token stream of at least seq_len={seq_len} tokens, got shape "
                              f"{tuple(tokens.shape)}; lower seq_len or use more text")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed

    @classmethod
    def from_text(
        cls, tokenizer: PreTrainedTokenizerBase, source: str, seq_len: int, batch_size: int, seed: int = 0
    ) -> TokenWindows:
        """Windows over the calibration split of `source` ('bundled', a .txt or .jsonl file, a dataset name)."""
        return cls(tokenize(tokenizer, load_text_source(source, "calibration")), seq_len, batch_size, seed)

    def batch(self, step: int) -> torch.Tensor:
        """Token ids [batch_size, seq_len] for training step `step`."""
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        starts = torch.randint(0, self.tokens.numel() - self.seq_len + 1, (self.batch_size,), generator=generator)
        return self.tokens[starts[:, None] + torch.arange(self.seq_len)]  # [batch_size, seq_len]
