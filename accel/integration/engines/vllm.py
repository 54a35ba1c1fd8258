"""vLLM adapter: an AccelConfig and an accel artifact -> vLLM's EngineArgs and the `vllm serve` command line.

Checked against vLLM 0.33.0 (vllm/engine/arg_utils.py EngineArgs, vllm/config/cache.py CacheDType,
vllm/config/speculative.py SpeculativeConfig, the compressed-tensors loader in
vllm/model_executor/layers/quantization/compressed_tensors/):

- Weights: the compressed-tensors artifact as it is (quantization "compressed-tensors": pack-quantized int4/int8
  weight-only, int-quantized W8A8 with symmetric weights, float-quantized FP8); an AutoAWQ export is detected from
  config.json (vLLM picks its AWQ kernel). 2- and 3-bit weights have no vLLM kernel.
- KV cache (kv_cache_dtype): "auto" for 16-bit; fp8 -> "fp8" (e4m3), which reads the artifact's calibrated
  k_scale/v_scale when its kv_cache_scheme is fp8 (vLLM reads only type float, num_bits 8, symmetric, per tensor
  or per head); int8 / int4 -> "int8_per_token_head" / "int4_per_token_head", quantized online per token and head
  (Triton attention backend). An artifact with int8 kv scales is refused: vLLM cannot load them.
- Speculative decoding (--speculative-config JSON): accel's ngram -> method "ngram" with prompt_lookup_min/max;
  draft_model -> method "draft_model" with the draft's path; engine-native methods (eagle, eagle3, mtp, suffix)
  pass through with speculative.draft_model. layer_skip and self_quant have no vLLM counterpart. vLLM drafts a
  fixed num_speculative_tokens: accel's dynamic draft length and acceptance kill switch do not carry over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accel.integration.engines.artifact import (
    ArtifactSummary,
    EngineConfigError,
    kv_choice,
    read_artifact,
    resolve_config,
)
from accel.schema import AccelConfig

__all__ = ["ENGINE_SPECULATIVE_METHODS", "VLLM_VERSION_CHECKED", "VLLMDeployment", "vllm_deployment"]

VLLM_VERSION_CHECKED = "0.33.0"
# vLLM methods that need a trained draft (passed through with speculative.draft_model).
ENGINE_SPECULATIVE_METHODS = ("eagle", "eagle3", "mtp", "deepseek_mtp", "medusa", "mlp_speculator", "suffix")
KV_DTYPES = {(8, "float"): "fp8", (8, "int"): "int8_per_token_head", (4, "int"): "int4_per_token_head"}
DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
WEIGHT_ONLY_BITS = (4, 8)


@dataclass(frozen=True)
class VLLMDeployment:
    """What vLLM takes for one artifact: EngineArgs keyword arguments (model included) and what the mapping could
    not keep."""

    model_path: str
    engine_args: dict[str, Any]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def serve_argv(self, host: str = "127.0.0.1", port: int = 8000) -> list[str]:
        """`vllm serve MODEL ...` as an argv list: every EngineArgs keyword as its --flag (vLLM derives each flag
        from the field name: max_model_len -> --max-model-len; a dict is passed as JSON; True is a bare flag)."""
        argv = ["vllm", "serve", self.model_path, "--host", host, "--port", str(port)]
        for key, value in self.engine_args.items():
            if key == "model" or value is None or value is False:
                continue
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, dict):
                argv += [flag, json.dumps(value, sort_keys=True)]
            else:
                argv += [flag, str(value)]
        return argv

    def build(self) -> Any:
        """vLLM's own EngineArgs, for vllm.LLM(**kwargs) or AsyncLLMEngine.from_engine_args(...). Needs vllm."""
        try:
            from vllm.engine.arg_utils import EngineArgs
        except ImportError as exc:
            raise EngineConfigError(
                f"building vLLM's EngineArgs needs vllm (checked: {VLLM_VERSION_CHECKED}): "
                f"pip install 'accel[engines-vllm]' ({exc})"
            ) from None
        return EngineArgs(**self.engine_args)

    def validate(self) -> dict[str, Any]:
        """Check this deployment with the installed vLLM: its own `vllm serve` parser reads the command line back to
        the same EngineArgs, and EngineArgs builds the full engine config from the artifact (model config read from
        its config.json, compressed-tensors config parsed, KV cache dtype and speculative config accepted). On a
        machine without a GPU set VLLM_TARGET_DEVICE=cpu first. Raises EngineConfigError on any disagreement."""
        engine_args = self.build()
        try:
            from vllm.engine.arg_utils import EngineArgs
            from vllm.entrypoints.common.cli_args import make_arg_parser, validate_parsed_serve_args
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError as exc:
            raise EngineConfigError(f"vLLM's CLI did not import ({exc}); checked: {VLLM_VERSION_CHECKED}") from None
        args = make_arg_parser(FlexibleArgumentParser(prog="vllm serve")).parse_args(self.serve_argv()[2:])
        validate_parsed_serve_args(args)
        args.model = args.model_tag  # what `vllm serve` does with the positional model
        parsed = EngineArgs.from_cli_args(args)
        wrong = {key: getattr(parsed, key) for key, value in self.engine_args.items() if getattr(parsed, key) != value}
        if wrong:
            raise EngineConfigError(f"vLLM's parser read {wrong}, expected {self.engine_args}")
        config = engine_args.create_engine_config()
        quant = config.quant_config
        if getattr(quant, "kv_cache_scheme", None) is not None:  # what vLLM checks when it builds the attention layers
            from vllm.model_executor.layers.quantization.compressed_tensors.compressed_tensors import (
                CompressedTensorsKVCacheMethod,
            )

            CompressedTensorsKVCacheMethod.validate_kv_cache_scheme(quant.kv_cache_scheme)
        return {
            "quantization": config.model_config.quantization,
            "quant_config": None if quant is None else type(quant).__name__,
            "kv_cache_scheme": getattr(quant, "kv_cache_scheme", None),
            "cache_dtype": config.cache_config.cache_dtype,
            "max_model_len": config.model_config.max_model_len,
            "speculative": None if config.speculative_config is None else {
                "method": config.speculative_config.method,
                "num_speculative_tokens": config.speculative_config.num_speculative_tokens},
        }


def _quantization(artifact: ArtifactSummary) -> tuple[str | None, list[str]]:
    """vLLM's `quantization` for the stored weights (None: none, or detected from config.json)."""
    if artifact.format == "dense":
        return None, []
    if artifact.format == "autoawq-gemm":
        return None, ["AutoAWQ checkpoint: vLLM detects it from config.json and picks its AWQ (Marlin) kernel"]
    for scheme in artifact.schemes:
        if scheme.format == "pack-quantized" and scheme.num_bits not in WEIGHT_ONLY_BITS:
            raise EngineConfigError(
                f"{artifact.path} stores {scheme.num_bits}-bit weights; vLLM's compressed-tensors weight-only kernels "
                f"take {' or '.join(map(str, WEIGHT_ONLY_BITS))} bits: quantize with weight_bits 4 or 8"
            )
        if scheme.format == "int-quantized" and not scheme.symmetric:
            raise EngineConfigError(
                f"{artifact.path} stores asymmetric int8 weights with int8 activations; vLLM's W8A8 int8 kernels take "
                "symmetric weights: quantize with symmetric true"
            )
    return "compressed-tensors", []


def _kv_cache_dtype(artifact: ArtifactSummary, config: AccelConfig) -> tuple[str, list[str]]:
    bits, kind, notes = kv_choice(config)
    scheme = artifact.kv_cache_scheme
    if scheme is not None and (scheme.get("type") != "float" or scheme.get("num_bits") != 8):
        raise EngineConfigError(
            f"{artifact.path} carries {scheme.get('num_bits')}-bit {scheme.get('type')} kv scales (kv_cache_scheme); "
            "vLLM loads only fp8 (type float, 8 bits) kv scales: re-export with quantization.kv_type float, or "
            "without kv scales to let vLLM quantize the cache online"
        )
    if bits == 16:
        if scheme is not None:
            notes.append("the artifact has fp8 kv scales but the profile keeps a 16-bit KV cache: the scales go unused")
        return "auto", notes
    dtype = KV_DTYPES.get((bits, kind))
    if dtype is None:
        raise EngineConfigError(f"quantization.kv_bits_decode {bits} with kv_type {kind!r} has no vLLM kv_cache_dtype")
    if dtype == "fp8" and scheme is None:
        notes.append("fp8 KV cache without calibrated scales in the artifact: vLLM uses scale 1.0 unless told to "
                     "calculate them; export with kv scales for calibrated ones")
    if dtype.endswith("_per_token_head"):
        notes.append(f"{dtype}: vLLM quantizes K/V online per token and head (Triton attention backend); accel's "
                     f"kv_strategy {config.quantization.kv_strategy!r} is not carried over")
    return dtype, notes


def _speculative(config: AccelConfig) -> tuple[dict[str, Any] | None, list[str]]:
    spec = config.speculative
    if spec is None or not spec.enabled:
        return None, []
    notes = []
    if spec.dynamic_draft_length or spec.min_acceptance_rate > 0:
        notes.append(f"vLLM drafts a fixed {spec.num_speculative_tokens} tokens per step: accel's dynamic draft "
                     "length and acceptance kill switch do not carry over")
    k = spec.num_speculative_tokens
    if spec.strategy == "ngram":
        return {"method": "ngram", "num_speculative_tokens": k, "prompt_lookup_min": spec.prompt_lookup_min,
                "prompt_lookup_max": spec.prompt_lookup_max}, notes
    if spec.strategy == "draft_model" or spec.strategy in ENGINE_SPECULATIVE_METHODS:
        if not spec.draft_model:
            raise EngineConfigError(f"speculative.strategy {spec.strategy!r} needs speculative.draft_model for vLLM")
        return {"method": spec.strategy, "model": spec.draft_model, "num_speculative_tokens": k}, notes
    raise EngineConfigError(
        f"speculative.strategy {spec.strategy!r} has no vLLM {VLLM_VERSION_CHECKED} counterpart (vLLM runs ngram, "
        f"draft_model and trained heads: {', '.join(ENGINE_SPECULATIVE_METHODS)}); use ngram or draft_model (e.g. a "
        "draft from `sage infer distill`), or set speculative.enabled false"
    )


def vllm_deployment(
    artifact: str | Path | ArtifactSummary,
    config: AccelConfig | None = None,
    *,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    max_model_len: int | None = None,
    verify: bool = True,
) -> VLLMDeployment:
    """Map an artifact (and the AccelConfig to serve it with; default: the one in its manifest) to vLLM.

    max_model_len defaults to the profile's max_sequence_length, capped by the model's max_position_embeddings.
    """
    summary = artifact if isinstance(artifact, ArtifactSummary) else read_artifact(artifact, verify=verify)
    config = resolve_config(summary, config)
    if tensor_parallel_size < 1 or not 0 < gpu_memory_utilization <= 1:
        raise EngineConfigError(
            f"tensor_parallel_size must be >= 1 and gpu_memory_utilization in (0, 1], got {tensor_parallel_size}, "
            f"{gpu_memory_utilization}"
        )
    quantization, notes = _quantization(summary)
    kv_dtype, kv_notes = _kv_cache_dtype(summary, config)
    speculative, spec_notes = _speculative(config)
    limit = summary.max_position_embeddings
    length = max_model_len or config.quantization.max_sequence_length
    if limit and length > limit:
        notes.append(f"max_model_len capped at the model's max_position_embeddings {limit} (the profile asks {length})")
        length = limit
    if summary.sparsity:
        notes.append("vLLM loads the dense weights (zeros included); accel's compact sparse form is not used")
    if config.quantization.kernel_backend in ("ascend", "mlu", "hygon", "kunlun"):
        notes.append(f"kernel_backend {config.quantization.kernel_backend}: serve with that vendor's vLLM platform "
                     "plugin (e.g. vllm-ascend); the engine arguments are the same")
    engine_args: dict[str, Any] = {
        "model": str(summary.path),
        "dtype": DTYPES.get(summary.dtype, "auto"),
        "quantization": quantization,
        "kv_cache_dtype": kv_dtype,
        "max_model_len": length,
        "tensor_parallel_size": tensor_parallel_size,
        "gpu_memory_utilization": gpu_memory_utilization,
        "enforce_eager": not config.enable_cuda_graphs,
        "speculative_config": speculative,
    }
    return VLLMDeployment(str(summary.path), engine_args, tuple([*notes, *kv_notes, *spec_notes]))
