"""Batches are fixed-length windows of the stream, a pure function of (seed, step)."""

import pytest
import torch

from accel.data.corpus import corpus_text
from accel.errors import CorpusError
from accel.tools.distillation.data import TokenWindows


def test_batches_are_windows_and_depend_only_on_seed_and_step():
    tokens = torch.arange(1000)
    windows = TokenWindows(tokens, seq_len=8, batch_size=3, seed=5)
    batch = windows.batch(7)
    assert batch.shape == (3, 8)
    assert torch.equal(batch - batch[:, :1], torch.arange(8).expand(3, 8))  # consecutive tokens
    assert torch.equal(batch, TokenWindows(tokens, 8, 3, seed=5).batch(7))
    assert not torch.equal(batch, windows.batch(8))
    assert not torch.equal(batch, TokenWindows(tokens, 8, 3, seed=6).batch(7))


def test_too_short_a_stream_is_an_error():
    with pytest.raises(CorpusError, match="lower seq_len"):
        TokenWindows(torch.arange(4), seq_len=8, batch_size=1)


class CharTokenizer:
    """Each character is a token: enough to check which text the windows come from."""

    def __call__(self, text, add_special_tokens=False, verbose=False):
        return {"input_ids": [ord(c) for c in text]}


def test_bundled_text_is_the_calibration_split():
    windows = TokenWindows.from_text(CharTokenizer(), "bundled", seq_len=4, batch_size=1)
    assert "".join(map(chr, windows.tokens.tolist())) == corpus_text("calibration")
