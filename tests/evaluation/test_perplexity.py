"""Perplexity matches a float64 computation by hand, and the bundled model's is plausible."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.data.corpus import evaluation_windows
from accel.evaluation import evaluate_perplexity, perplexity
from accel.runtime.loaders import load_model


@pytest.fixture(scope="module")
def bundled() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return load_model()


@pytest.mark.slow
def test_matches_a_float64_reference(bundled: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, tokenizer = bundled
    windows = evaluation_windows(tokenizer, seq_len=32, max_tokens=96)  # [3, 32]
    result = perplexity(model, windows, batch_size=2)  # a full batch and a partial one

    with torch.inference_mode():
        logits = model(input_ids=windows).logits.double()  # [3, 32, vocab], in one batch
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)).item()

    assert (result.num_windows, result.seq_len, result.num_tokens) == (3, 32, 3 * 31)
    assert result.nll == pytest.approx(nll, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(nll), rel=1e-4)
    assert result.seconds > 0


@pytest.mark.slow
def test_bundled_model_perplexity_is_plausible(
    bundled: tuple[PreTrainedModel, PreTrainedTokenizerBase],
) -> None:
    model, tokenizer = bundled
    result = evaluate_perplexity(model, tokenizer, seq_len=256, max_tokens=2048)
    print(
        f"\nbundled fp32 perplexity {result.perplexity:.3f} over {result.num_tokens} tokens "
        f"({result.num_windows} x {result.seq_len}) in {result.seconds:.1f} s"
    )
    assert result.num_windows == 8
    assert math.isfinite(result.perplexity)
    assert 2 < result.perplexity < 100


@pytest.mark.slow
def test_progress_bar_goes_to_stderr(
    bundled: tuple[PreTrainedModel, PreTrainedTokenizerBase], capsys: pytest.CaptureFixture[str]
) -> None:
    model, tokenizer = bundled
    perplexity(model, evaluation_windows(tokenizer, seq_len=8, max_tokens=16), progress=True)
    captured = capsys.readouterr()
    assert "ppl" in captured.err and captured.out == ""


@pytest.mark.slow
def test_rejects_windows_of_the_wrong_shape(bundled: tuple[PreTrainedModel, PreTrainedTokenizerBase]) -> None:
    model, _ = bundled
    with pytest.raises(ValueError, match=r"got shape \(16,\)"):
        perplexity(model, torch.zeros(16, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(4, 1\)"):
        perplexity(model, torch.zeros(4, 1, dtype=torch.long))
