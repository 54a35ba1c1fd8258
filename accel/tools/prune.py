"""The prune job behind `sage infer prune`: load, measure, prune (then optionally quantize, keeping the mask),
measure again, and write the artifact with its compact sparse form.

Sizes: the FP16 dense model; the model as the artifact holds it (dense-with-zeros weights, packed codes when
quantized); and the compact estimate, where each pruned layer keeps only its kept values plus the pattern's metadata
(N:M indices, bitmask, or block list), the form sparse kernels read.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from accel.data.corpus import corpus_fingerprint
from accel.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from accel.plugins.registry import PluginRegistry
from accel.quantization.pipeline import QuantizationResult
from accel.quantization.qlinear import QuantLinear
from accel.runtime.loaders import load_model
from accel.schema import AccelConfig
from accel.sparsity.pipeline import PruningResult, prune_model
from accel.sparsity.storage import index_bits, layout_for
from accel.tools.quantize import kernel_meta, model_bytes, quantize_loaded


@dataclass
class PruneReport:
    """Everything the closing table shows, JSON-ready through to_dict()."""

    model: str
    pattern: str
    method: str
    then_quantize: str | None
    fp16_bytes: int
    model_bytes: int
    compact_bytes: int
    sparsity_by_kind: dict[str, float]
    perplexity_before: PerplexityResult | None
    perplexity_pruned: PerplexityResult | None
    perplexity_after: PerplexityResult | None
    pruning: PruningResult
    quantization: QuantizationResult | None = None
    artifact: str | None = None
    artifact_bytes: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def ppl(result: PerplexityResult | None) -> dict[str, Any] | None:
            return None if result is None else asdict(result)

        return {
            "model": self.model, "pattern": self.pattern, "method": self.method, "then_quantize": self.then_quantize,
            "fp16_bytes": self.fp16_bytes, "model_bytes": self.model_bytes, "compact_bytes": self.compact_bytes,
            "sparsity_by_kind": self.sparsity_by_kind,
            "perplexity_before": ppl(self.perplexity_before), "perplexity_pruned": ppl(self.perplexity_pruned),
            "perplexity_after": ppl(self.perplexity_after),
            "pruning_seconds": self.pruning.seconds, "calibration_tokens": self.pruning.calibration_tokens,
            "peak_rss_bytes": self.pruning.peak_rss_bytes, "layers": self.pruning.layers,
            "quantization_layers": None if self.quantization is None else self.quantization.layers,
            "artifact": self.artifact, "artifact_bytes": self.artifact_bytes, "seconds": self.seconds,
            "corpus_sha256": corpus_fingerprint(), **self.extra,
        }


def sparsity_by_kind(masks: dict[str, torch.Tensor]) -> dict[str, float]:
    """Fraction of weights dropped per linear kind (q_proj, ..., down_proj) and over every pruned layer ('all')."""
    kept: dict[str, int] = {}
    total: dict[str, int] = {}
    for name, mask in [*masks.items(), *(("all", mask) for mask in masks.values())]:
        kind = name.rpartition(".")[2]
        kept[kind] = kept.get(kind, 0) + int(mask.sum())
        total[kind] = total.get(kind, 0) + mask.numel()
    return {kind: 1 - kept[kind] / total[kind] for kind in total}


def compact_bytes(model: nn.Module, masks: dict[str, torch.Tensor], pattern: str, block_shape: tuple[int, int]) -> int:
    """model_bytes with each pruned layer's weight stored as its kept values plus the pattern's metadata."""
    total = model_bytes(model)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        bits = module.weight_args.num_bits if isinstance(module, QuantLinear) else 16
        kept = int(mask.sum())
        layout = layout_for(pattern, mask.shape[1])
        if layout == "nm":
            meta = math.ceil(kept * index_bits(int(pattern.split(":")[1])) / 8)
        elif layout == "blocks":
            br, bc = block_shape
            meta = 8 * math.ceil(kept / (br * bc))  # (row, col) int32 per kept block (edge blocks approximate)
        else:
            meta = mask.shape[0] * math.ceil(mask.shape[1] / 8)
        total += math.ceil(kept * bits / 8) + meta - mask.numel() * bits // 8
    return total


# The runtime's sparse execution paths, by pattern: the layer format each serves (quant_backend.W4A16Sparse24Linear,
# block_sparse.BlockSparseLinear); a backend must also list the pattern in its capability. Anything else runs the
# dense-with-zeros weights.
SPARSE_PATHS = {"2:4": "w4a16", "block": "float"}


def sparse_kernel_meta(registry: PluginRegistry, pattern: str, layer_format: str = "float") -> dict[str, Any]:
    """Per available backend: whether layers of `layer_format` ("float", "w4a16" or another quantized format) pruned
    with `pattern` run through a sparse kernel there, or as the dense-with-zeros weights."""
    meta: dict[str, Any] = {}
    served = SPARSE_PATHS.get(pattern) == layer_format
    for name, spec in registry.kernel_backends().items():
        if spec.is_available():
            capability = spec.capability()
            runs = "sparse" if served and pattern in capability.supported_sparse_formats else "dense-with-zeros"
            entry: dict[str, Any] = {"pattern": pattern, "layers": layer_format, "runs": runs}
            if runs == "sparse" and pattern == "block":
                from accel.runtime.block_sparse import MAX_KEPT_FRACTION, MIN_WEIGHTS

                entry["where"] = (f"decode (M = 1) of layers keeping at most {MAX_KEPT_FRACTION:.0%} of their blocks "
                                  f"with at least {MIN_WEIGHTS} weights; others run dense-with-zeros")
            meta[name] = {"device": capability.device_name, "sparse": entry}
    return meta


def sparse_layer_format(layers: dict[str, dict[str, Any]] | None) -> str:
    """"float" for unquantized layers, "w4a16" when every quantized layer is 4-bit weights with 16-bit activations,
    else "mixed" (the quantize step's per-layer records, or None)."""
    if not layers:
        return "float"
    formats = {(c.get("type"), c.get("num_bits"), c.get("activations")) for c in layers.values() if "num_bits" in c}
    return "w4a16" if formats and all(t == "int" and b == 4 and not a for t, b, a in formats) else "mixed"


def run_prune(
    config: AccelConfig,
    registry: PluginRegistry,
    *,
    model_name: str | None = None,
    then_quantize: str | None = None,
    out: Path | None = None,
    eval_tokens: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> PruneReport:
    """Prune as `config.sparsity` says (calibrating on `config.quantization`'s calibration set), then quantize with
    `config.quantization` when `then_quantize` names the preset it came from; evaluate; write the artifact."""
    if config.sparsity is None:
        raise ValueError("config.sparsity is None: give the pruning recipe (pattern, ratio, method)")
    start = time.perf_counter()
    registry.pruning_method(config.sparsity.method)  # an unknown method fails before the model loads
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    fp16_bytes = model_bytes(model)

    def perplexity() -> PerplexityResult | None:
        return evaluate_perplexity(model, tokenizer, max_tokens=eval_tokens, progress=progress) if evaluate else None

    before = perplexity()
    pruning = prune_model(model, tokenizer, config.sparsity, registry, calibration=config.quantization,
                          progress=progress)
    pruned = perplexity()
    quantization, after = None, None
    if then_quantize is not None:
        quantization, _, after = quantize_loaded(
            model, tokenizer, config, registry, eval_tokens=eval_tokens, evaluate=False, progress=progress
        )
        after = perplexity()
    report = PruneReport(
        model=model_name or "bundled", pattern=config.sparsity.pattern, method=config.sparsity.method,
        then_quantize=then_quantize, fp16_bytes=fp16_bytes, model_bytes=model_bytes(model),
        compact_bytes=compact_bytes(model, pruning.masks, config.sparsity.pattern, config.sparsity.block_shape),
        sparsity_by_kind=sparsity_by_kind(pruning.masks), perplexity_before=before, perplexity_pruned=pruned,
        perplexity_after=after, pruning=pruning, quantization=quantization,
    )
    if out is not None:
        from accel.runtime.artifact import save_artifact

        meta = sparse_kernel_meta(registry, config.sparsity.pattern,
                                  sparse_layer_format(quantization.layers if quantization else None))
        if quantization is not None:
            for backend, entry in kernel_meta(registry, quantization.layers).items():
                meta.setdefault(backend, {}).update(entry)
        choices = {name: {"sparsity": record} for name, record in pruning.layers.items()}
        for name, record in (quantization.layers if quantization else {}).items():
            choices.setdefault(name, {})["quantization"] = record
        info = save_artifact(
            model, tokenizer, out, config, source=model_name or "bundled", kv_scales=None if quantization is None
            else quantization.kv_scales or None, layer_choices=choices, kernel_meta=meta, overwrite=True,
            sparse_masks=pruning.masks,
        )
        report.artifact, report.artifact_bytes = str(info.path), info.total_bytes
    report.seconds = time.perf_counter() - start
    return report
