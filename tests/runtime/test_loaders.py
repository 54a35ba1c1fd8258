"""The bundled model converts once into the cache, loads from it after, and a missing model says what to do."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import ModelNotAvailableError
from accel.runtime import loaders
from accel.runtime.loaders import BUNDLED_MODEL, bundled_cache_dir, bundled_gguf, load_model, model_info


@dataclass
class Converted:
    cache_root: Path
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    seconds: float


@pytest.fixture(scope="session")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converted]:
    """One GGUF -> safetensors conversion into a fresh cache root, shared by every test here."""
    root = tmp_path_factory.mktemp("accel-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ACCEL_CACHE_DIR", str(root))
        start = time.perf_counter()
        model, tokenizer = load_model()
        seconds = time.perf_counter() - start
    print(f"\nbundled model converted in {seconds:.1f} s")
    yield Converted(root, model, tokenizer, seconds)


@pytest.mark.slow
def test_bundled_model_is_smollm2_135m(converted: Converted) -> None:
    model = converted.model
    assert isinstance(model, LlamaForCausalLM)
    assert not model.training
    info = model_info(model)
    assert info["architecture"] == "LlamaForCausalLM"
    assert (info["num_layers"], info["hidden_size"], info["vocab_size"]) == (30, 576, 49152)
    assert info["dtype"] == "float32" and info["device"] == "cpu"
    # tied embeddings: lm_head shares the embedding, so it is counted once (~134.5M, not ~163M)
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert 130e6 < info["parameters"] < 140e6
    assert info["parameter_bytes"] == 4 * info["parameters"]
    assert converted.tokenizer("Hello world")["input_ids"] == [19556, 905]


@pytest.mark.slow
def test_conversion_writes_a_complete_cache(converted: Converted) -> None:
    target = converted.cache_root / "models" / BUNDLED_MODEL
    assert (target / "model.safetensors").is_file()
    assert (target / "tokenizer.json").is_file()
    marker = json.loads((target / loaders.MARKER_FILE).read_text(encoding="utf-8"))
    gguf = bundled_gguf()
    assert gguf is not None
    assert marker["gguf_bytes"] == gguf.stat().st_size
    # the staging directory was renamed into place, nothing is left beside it
    assert [p.name for p in target.parent.iterdir()] == [BUNDLED_MODEL]


@pytest.mark.slow
def test_second_load_reads_the_cache(converted: Converted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(converted.cache_root))
    weights = bundled_cache_dir() / "model.safetensors"
    written = weights.stat().st_mtime_ns
    start = time.perf_counter()
    model, _ = load_model(BUNDLED_MODEL)
    seconds = time.perf_counter() - start
    print(f"\nbundled model loaded from the cache in {seconds:.2f} s (conversion took {converted.seconds:.1f} s)")
    assert model.name_or_path == str(bundled_cache_dir())
    assert weights.stat().st_mtime_ns == written
    assert seconds < converted.seconds / 2
    first = converted.model.state_dict()
    assert all(torch.equal(first[name], value) for name, value in model.state_dict().items())


@pytest.mark.slow
def test_cache_honours_dtype(converted: Converted, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ACCEL_CACHE_DIR", str(converted.cache_root))
    model, _ = load_model("bundled", dtype=torch.bfloat16)
    info = model_info(model)
    assert info["dtype"] == "bfloat16"
    assert info["parameter_bytes"] == 2 * info["parameters"]


def test_changed_source_invalidates_the_cache(tmp_path: Path) -> None:
    stamp = {"gguf": "model.gguf", "gguf_bytes": 100, "transformers": "5.0.0"}
    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / loaders.MARKER_FILE).write_text(json.dumps(stamp), encoding="utf-8")
    assert loaders._cache_is_valid(tmp_path, stamp)
    assert not loaders._cache_is_valid(tmp_path, {**stamp, "gguf_bytes": 101})
    assert not loaders._cache_is_valid(tmp_path, {**stamp, "transformers": "5.1.0"})
    (tmp_path / loaders.MARKER_FILE).write_text("{not json", encoding="utf-8")
    assert not loaders._cache_is_valid(tmp_path, stamp)


def test_missing_directory_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotAvailableError, match=str(missing)):
        load_model(str(missing))


def test_directory_without_a_model_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailableError, match=f"{tmp_path} needs config.json"):
        load_model(str(tmp_path))


def test_unknown_hub_id_does_not_download(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCEL_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(ModelNotAvailableError, match="accel-test/no-such-model is not in the local"):
        load_model("accel-test/no-such-model")
