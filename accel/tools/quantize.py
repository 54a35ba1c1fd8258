"""The quantize job behind `sage infer quantize` and AccelController.get_quantized_model.

Load the model, measure its perplexity, quantize it as the config says, measure again, and (optionally)
write the deployable artifact. Sizes compare the FP16 baseline with the quantized model's bytes.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.compat import check_config
from accel.data.corpus import corpus_fingerprint
from accel.errors import UnsupportedProfileError
from accel.evaluation.perplexity import PerplexityResult, evaluate_perplexity
from accel.plugins.registry import PluginRegistry
from accel.quantization.pipeline import QuantizationResult, quantize_model
from accel.quantization.qlinear import QuantLinear
from accel.runtime.loaders import load_model
from accel.schema import AccelConfig


def model_bytes(model: nn.Module, fp_bytes: int = 2) -> int:
    """Bytes to store the model as deployed: packed codes + scales + zero points for quantized layers,
    `fp_bytes` per element for everything else (2 = the FP16 baseline); tied tensors counted once."""
    total, seen = 0, set()
    for module in model.modules():
        if isinstance(module, QuantLinear):
            bits = module.weight_args.num_bits
            total += module.weight_q.numel() * bits // 8 + module.weight_scale.numel() * 2
            if module.weight_zero_point is not None:
                total += module.weight_zero_point.numel() * bits // 8
            if module.weight_g_idx is not None:
                total += module.weight_g_idx.numel() * 4
            if module.bias is not None:
                total += module.bias.numel() * fp_bytes
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                total += parameter.numel() * fp_bytes
    return total


@dataclass
class QuantizeReport:
    """Everything the closing table shows, JSON-ready through to_dict()."""

    model: str
    scheme: str
    method: str
    fp16_bytes: int
    quantized_bytes: int
    perplexity_before: PerplexityResult | None
    perplexity_after: PerplexityResult | None
    quantization: QuantizationResult
    artifact: str | None = None
    artifact_bytes: int | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "model": self.model, "scheme": self.scheme, "method": self.method,
            "fp16_bytes": self.fp16_bytes, "quantized_bytes": self.quantized_bytes,
            "perplexity_before": None if self.perplexity_before is None else asdict(self.perplexity_before),
            "perplexity_after": None if self.perplexity_after is None else asdict(self.perplexity_after),
            "quantization_seconds": self.quantization.seconds,
            "calibration_tokens": self.quantization.calibration_tokens,
            "peak_rss_bytes": self.quantization.peak_rss_bytes,
            "layers": self.quantization.layers,
            "artifact": self.artifact, "artifact_bytes": self.artifact_bytes,
            "seconds": self.seconds, "corpus_sha256": corpus_fingerprint(),
        }
        return {**data, **self.extra}


def kernel_meta(registry: PluginRegistry, layers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which kernel each layer format would run on each available backend (recorded in the artifact)."""
    formats = sorted({_layer_format(choice) for choice in layers.values() if "num_bits" in choice})
    meta: dict[str, Any] = {}
    for name, spec in registry.kernel_backends().items():
        if not spec.is_available():
            continue
        capability = spec.capability()
        meta[name] = {
            "device": capability.device_name,
            "formats": {fmt: registry.select_kernel("dequant_linear", capability).meta() for fmt in formats},
        }
    return meta


def _layer_format(choice: dict[str, Any]) -> str:
    weight = "fp8" if choice["type"] == "float" else f"int{choice['num_bits']}"
    return f"w:{weight}{'' if choice['symmetric'] else '-asym'} a:{choice.get('activations') or '16'}"


def quantize_loaded(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: AccelConfig,
    registry: PluginRegistry,
    *,
    eval_tokens: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> tuple[QuantizationResult, PerplexityResult | None, PerplexityResult | None]:
    """Quantize an already loaded model in place, with perplexity before and after when `evaluate`."""
    report = check_config(config, registry, "reference" if config.quantization.kernel_backend == "auto" else None)
    missing = [r for r in report.reasons if "not provided by any loaded plugin" in r]
    if missing:
        raise UnsupportedProfileError("; ".join(missing))
    before = evaluate_perplexity(model, tokenizer, max_tokens=eval_tokens, progress=progress) if evaluate else None
    result = quantize_model(model, tokenizer, config.quantization, registry, progress=progress)
    after = evaluate_perplexity(model, tokenizer, max_tokens=eval_tokens, progress=progress) if evaluate else None
    return result, before, after


def run_quantize(
    config: AccelConfig,
    registry: PluginRegistry,
    *,
    model_name: str | None = None,
    out: Path | None = None,
    artifact_format: str = "compressed-tensors",
    eval_tokens: int | None = None,
    evaluate: bool = True,
    progress: bool = True,
) -> QuantizeReport:
    """Load, quantize, evaluate and (if `out`) write the artifact; see the module docstring."""
    start = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=torch.float32)
    if out is not None and artifact_format == "autoawq":
        from accel.runtime.export_awq import check_exportable

        check_exportable(model, config.quantization)  # fail before the expensive part
    fp16_bytes = model_bytes(model)
    result, before, after = quantize_loaded(
        model, tokenizer, config, registry, eval_tokens=eval_tokens, evaluate=evaluate, progress=progress
    )
    report = QuantizeReport(
        model=model_name or "bundled", scheme=config.quantization.scheme_name(), method=config.quantization.method,
        fp16_bytes=fp16_bytes, quantized_bytes=model_bytes(model), perplexity_before=before,
        perplexity_after=after, quantization=result,
    )
    if out is not None:
        from accel.runtime.artifact import save_artifact
        from accel.runtime.export_awq import export_autoawq

        common = {"source": model_name or "bundled", "layer_choices": result.layers,
                  "kernel_meta": kernel_meta(registry, result.layers), "overwrite": True}
        if artifact_format == "autoawq":
            info = export_autoawq(model, tokenizer, out, config, **common)
        else:
            info = save_artifact(model, tokenizer, out, config, kv_scales=result.kv_scales or None, **common)
        report.artifact, report.artifact_bytes = str(info.path), info.total_bytes
    report.seconds = time.perf_counter() - start
    return report
