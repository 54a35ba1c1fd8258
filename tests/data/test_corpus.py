"""The bundled corpus splits are disjoint and fixed; windows and samples have the promised shapes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from pydoc_data.topics import topics

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from accel.data.corpus import (
    calibration_samples,
    corpus_fingerprint,
    corpus_text,
    evaluation_windows,
    load_text_source,
    split_of,
    tokenize,
)
from accel.errors import CorpusError
from accel.runtime.loaders import load_model


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return load_model()[1]


def test_splits_are_disjoint_and_cover_every_topic() -> None:
    evaluation = {name for name in topics if split_of(name) == "evaluation"}
    calibration = {name for name in topics if split_of(name) == "calibration"}
    assert evaluation and calibration
    assert evaluation.isdisjoint(calibration)
    assert evaluation | calibration == set(topics)
    assert corpus_text("evaluation") == "\n\n".join(topics[name] for name in sorted(evaluation))
    # no held-out document leaks into the calibration text (short ones may recur as phrases, so skip those)
    calibration_text = corpus_text("calibration")
    assert not any(topics[name] in calibration_text for name in evaluation if len(topics[name]) > 200)


def test_split_is_the_documented_hash_rule() -> None:
    for name in topics:
        held_out = int(hashlib.sha256(name.encode()).hexdigest(), 16) % 5 == 0
        assert split_of(name) == ("evaluation" if held_out else "calibration")


def test_splits_are_deterministic_and_about_a_fifth() -> None:
    assert corpus_text("evaluation") == corpus_text("evaluation")
    assert corpus_fingerprint() == corpus_fingerprint()
    assert len(corpus_fingerprint()) == 64
    evaluation, calibration = len(corpus_text("evaluation")), len(corpus_text("calibration"))
    assert 0.10 < evaluation / (evaluation + calibration) < 0.30


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(CorpusError, match="'train'"):
        corpus_text("train")  # type: ignore[arg-type]


@pytest.mark.slow
def test_calibration_samples_are_seeded_windows(tokenizer: PreTrainedTokenizerBase) -> None:
    samples = calibration_samples(tokenizer, num_samples=8, seq_len=64, seed=3)
    assert samples.shape == (8, 64) and samples.dtype == torch.long
    assert torch.equal(samples, calibration_samples(tokenizer, num_samples=8, seq_len=64, seed=3))
    assert not torch.equal(samples, calibration_samples(tokenizer, num_samples=8, seq_len=64, seed=4))
    # every sample is a contiguous slice of the tokenized calibration split
    every_window = tokenize(tokenizer, corpus_text("calibration")).unfold(0, 64, 1)  # [positions, 64]
    for sample in samples:
        assert (every_window == sample).all(dim=1).any()
    with pytest.raises(CorpusError, match="seq_len"):
        calibration_samples(tokenizer, num_samples=1, seq_len=10**7)


@pytest.mark.slow
def test_evaluation_windows_are_consecutive(tokenizer: PreTrainedTokenizerBase) -> None:
    tokens = tokenize(tokenizer, corpus_text("evaluation"))
    windows = evaluation_windows(tokenizer, seq_len=512)
    assert windows.shape == (tokens.numel() // 512, 512)
    assert torch.equal(windows.flatten(), tokens[: windows.numel()])
    assert evaluation_windows(tokenizer, seq_len=100, max_tokens=1050).shape == (10, 100)
    with pytest.raises(CorpusError, match="fewer than one window"):
        evaluation_windows(tokenizer, seq_len=512, max_tokens=100)


def test_bundled_source_is_the_calibration_split() -> None:
    assert load_text_source("bundled") == corpus_text("calibration")
    assert load_text_source("bundled", split="evaluation") == corpus_text("evaluation")


def test_text_and_jsonl_files(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("one\ntwo\n", encoding="utf-8")
    assert load_text_source(str(text_file)) == "one\ntwo\n"
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "first"}\n\n{"text": "second", "id": 2}\n', encoding="utf-8")
    assert load_text_source(str(jsonl)) == "first\n\nsecond"


def test_jsonl_without_text_names_file_and_line(tmp_path: Path) -> None:
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"body": "no text field"}\n', encoding="utf-8")
    with pytest.raises(CorpusError, match=f'{jsonl}:2: no "text" field'):
        load_text_source(str(jsonl))
    jsonl.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(CorpusError, match=f"{jsonl}:2: not valid JSON"):
        load_text_source(str(jsonl))


def test_bad_sources_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CorpusError, match="no such file"):
        load_text_source(str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no text"):
        load_text_source(str(tmp_path / "empty.txt"))
    (tmp_path / "table.csv").write_text("a,b\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="use .txt or .jsonl"):
        load_text_source(str(tmp_path / "table.csv"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_text_source(str(tmp_path / "latin1.txt"))
    # a name that is no file goes to `datasets`, offline: either it is not installed or the set is not cached
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("ACCEL_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(CorpusError, match="accel-test-no-such-dataset"):
        load_text_source("accel-test-no-such-dataset")
