"""The offline text corpus: CPython's `pydoc_data.topics`, split into fixed calibration and evaluation sets.

Every Python install ships these ~465 KB of English reference prose, so calibration and perplexity need no
download. The split is by document (topic) and by a hash of its name, so it is disjoint, deterministic and
independent of dict order; the text itself varies by Python version, which `corpus_fingerprint` records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from pydoc_data.topics import topics
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from accel.errors import CorpusError

Split = Literal["calibration", "evaluation"]
SPLITS: tuple[Split, ...] = ("calibration", "evaluation")
EVALUATION_MODULUS = 5  # one topic in five (by hash) is held out for evaluation: about 20% of documents

__all__ = [
    "CorpusError",
    "Split",
    "calibration_samples",
    "corpus_fingerprint",
    "corpus_text",
    "evaluation_windows",
    "load_text_source",
    "split_of",
    "tokenize",
]


def split_of(topic: str) -> Split:
    """Which split a topic belongs to: evaluation when sha256(name) % 5 == 0, else calibration."""
    digest = int(hashlib.sha256(topic.encode("utf-8")).hexdigest(), 16)
    return "evaluation" if digest % EVALUATION_MODULUS == 0 else "calibration"


def corpus_text(split: Split) -> str:
    """The documents of one split, in sorted topic order, joined by blank lines."""
    if split not in SPLITS:
        raise CorpusError(f"unknown corpus split {split!r}; use 'calibration' or 'evaluation'")
    return "\n\n".join(topics[name] for name in sorted(topics) if split_of(name) == split)


def corpus_fingerprint() -> str:
    """sha256 over both splits, to record in results files which corpus text a number was measured on."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update(split.encode("utf-8") + b"\0" + corpus_text(split).encode("utf-8") + b"\0")
    return digest.hexdigest()


def tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, without special tokens (windows are arbitrary cuts)."""
    ids = tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


def calibration_samples(
    tokenizer: PreTrainedTokenizerBase, num_samples: int, seq_len: int, seed: int = 0
) -> torch.Tensor:
    """`num_samples` windows of `seq_len` tokens at seeded random offsets in the calibration split.

    Returns [num_samples, seq_len] token ids; the same seed gives the same windows.
    """
    tokens = tokenize(tokenizer, corpus_text("calibration"))
    if seq_len < 1 or seq_len > tokens.numel():
        raise CorpusError(
            f"seq_len {seq_len} does not fit the calibration split ({tokens.numel()} tokens); "
            f"use 1 <= seq_len <= {tokens.numel()}"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, tokens.numel() - seq_len + 1, (num_samples,), generator=generator)
    offsets = starts[:, None] + torch.arange(seq_len)  # [num_samples, seq_len] indices into tokens
    return tokens[offsets]


def evaluation_windows(tokenizer: PreTrainedTokenizerBase, seq_len: int, max_tokens: int | None = None) -> torch.Tensor:
    """The evaluation split (its first `max_tokens` tokens if given) in consecutive non-overlapping windows.

    Returns [n, seq_len] with n = tokens // seq_len; the incomplete tail is dropped.
    """
    tokens = tokenize(tokenizer, corpus_text("evaluation"))
    if max_tokens is not None:
        tokens = tokens[:max_tokens]
    num_windows = tokens.numel() // seq_len if seq_len >= 1 else 0
    if num_windows == 0:
        raise CorpusError(
            f"the evaluation split has {tokens.numel()} tokens (max_tokens={max_tokens}), fewer than one "
            f"window of seq_len {seq_len}; lower seq_len or raise max_tokens"
        )
    return tokens[: num_windows * seq_len].view(num_windows, seq_len)


def _read_jsonl(path: Path) -> str:
    """The "text" field of every non-blank line, joined by blank lines; errors name the file and line."""
    documents = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(
                    f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON object per line"
                ) from None
            text = record.get("text") if isinstance(record, dict) else None
            if not isinstance(text, str):
                raise CorpusError(
                    f'{path}:{number}: no "text" field with a string value; every line must be an object '
                    'like {"text": "..."}'
                )
            documents.append(text)
    return "\n\n".join(documents)


def _read_dataset(name: str) -> str:
    """The "text" column of the train split of a `datasets` dataset (NAME or NAME:CONFIG), offline."""
    if os.environ.get("ACCEL_ALLOW_DOWNLOAD") != "1":
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise CorpusError(
            f"text source {name!r} is not a file, and the `datasets` package is not installed to read it as "
            "a dataset name; pass 'bundled', a .txt file or a .jsonl file, or pip install datasets"
        ) from None
    dataset_name, _, config = name.partition(":")
    try:
        dataset = datasets.load_dataset(dataset_name, config or None, split="train")
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ConnectionError, ValueError)
        raise CorpusError(
            f"dataset {name!r} is not available offline ({exc}); download it first, set "
            "ACCEL_ALLOW_DOWNLOAD=1, or pass a .txt or .jsonl file"
        ) from exc
    if "text" not in dataset.column_names:
        raise CorpusError(f"dataset {name!r} has no 'text' column (columns: {dataset.column_names})")
    return "\n\n".join(dataset["text"])


def load_text_source(source: str, split: Split = "calibration") -> str:
    """Text from 'bundled' (that split of this corpus), a .txt or .jsonl file, or a `datasets` name."""
    if source == "bundled":
        return corpus_text(split)
    path = Path(source).expanduser()
    if path.suffix in (".txt", ".jsonl") or path.exists():
        if not path.is_file():
            raise CorpusError(f"{path}: no such file; pass an existing .txt or .jsonl file or 'bundled'")
        try:
            if path.suffix == ".txt":
                text = path.read_text(encoding="utf-8")
            elif path.suffix == ".jsonl":
                text = _read_jsonl(path)
            else:
                raise CorpusError(f"{path}: unknown text format {path.suffix!r}; use .txt or .jsonl")
        except UnicodeDecodeError as exc:
            raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); re-encode it") from exc
        if not text.strip():
            raise CorpusError(f"{path}: no text in the file; pass a file with some text in it")
        return text
    return _read_dataset(source)
