"""Text for calibration and evaluation: the bundled offline corpus and user text sources."""

from accel.data.corpus import (
    CorpusError,
    Split,
    calibration_samples,
    corpus_fingerprint,
    corpus_text,
    evaluation_windows,
    load_text_source,
)

__all__ = [
    "CorpusError",
    "Split",
    "calibration_samples",
    "corpus_fingerprint",
    "corpus_text",
    "evaluation_windows",
    "load_text_source",
]
