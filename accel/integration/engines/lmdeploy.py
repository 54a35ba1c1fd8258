"""LMDeploy adapter: an AccelConfig and an accel artifact -> LMDeploy's engine config, speculative config and the
`lmdeploy serve api_server` command line.

Checked against LMDeploy 0.18.0 (the classes in lmdeploy/messages.py, the CLI in lmdeploy/cli/serve.py and
cli/utils.py, the loaders' checks in lmdeploy/turbomind/converter.py and lmdeploy/pytorch/config.py):

- Weights. TurboMind loads AutoAWQ GEMM checkpoints (model_format "awq", group size 128) and compressed-tensors
  pack-quantized int4 (model_format "compressed-tensors", one config group targeting Linear, group size 32 or
  128, zero points allowed). The PyTorch engine loads compressed-tensors only as int4, symmetric, group size 32,
  weight-only, and AWQ. Neither loads compressed-tensors W8A8 or FP8 (LMDeploy's W8A8 is its own smooth_quant
  format); a dense artifact loads as "hf".
- KV cache (quant_policy): 0 (16-bit), 8 (int8), 4 (int4) on both engines; 16 (fp8 e4m3) on the PyTorch engine
  only. LMDeploy quantizes K/V online per head and token with its own scales; accel's calibrated kv scales in
  the artifact are not read.
- Speculative decoding (SpeculativeConfig.method): eagle, eagle3, deepseek_mtp, hy3_mtp, qwen3_5_mtp, dflash,
  all with a trained draft head, on the PyTorch engine only (TurboMind logs a warning and ignores it, in
  lmdeploy/serve/core/async_engine.py). accel's ngram, layer_skip, self_quant and draft_model strategies have
  no LMDeploy counterpart: the adapter says so instead of dropping them silently.
- Devices: the PyTorch engine runs on cuda, ascend (Huawei) and camb (Cambricon MLU) through dlinfer; accel's
  kernel_backend picks it (ascend -> ascend, mlu -> camb, cuda/auto -> cuda).
"""

from __future__ import annotations

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

__all__ = [
    "LMDEPLOY_VERSION_CHECKED",
    "SPECULATIVE_METHODS",
    "LMDeployDeployment",
    "lmdeploy_deployment",
]

LMDEPLOY_VERSION_CHECKED = "0.18.0"
BACKENDS = ("turbomind", "pytorch")
SPECULATIVE_METHODS = ("eagle", "eagle3", "deepseek_mtp", "hy3_mtp", "qwen3_5_mtp", "dflash")
TURBOMIND_GROUP_SIZES = {"awq": (128,), "compressed-tensors": (32, 128)}
PYTORCH_CT_GROUP_SIZE = 32
DEVICES = {"auto": "cuda", "cuda": "cuda", "reference": "cuda", "ascend": "ascend", "mlu": "camb"}
DTYPES = {"float16": "float16", "bfloat16": "bfloat16"}  # anything else: "auto" (LMDeploy picks fp16/bf16)


@dataclass(frozen=True)
class LMDeployDeployment:
    """What LMDeploy takes for one artifact: keyword arguments of its engine config class (TurbomindEngineConfig
    or PytorchEngineConfig, by `backend`) and of its SpeculativeConfig, plus what the mapping could not keep."""

    backend: str
    model_path: str
    engine_config: dict[str, Any]
    speculative_config: dict[str, Any] | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def api_server_argv(self, host: str = "127.0.0.1", port: int = 23333) -> list[str]:
        """`lmdeploy serve api_server ...` for this deployment, as an argv list (no shell quoting needed)."""
        cfg = self.engine_config
        argv = ["lmdeploy", "serve", "api_server", self.model_path, "--backend", self.backend,
                "--server-name", host, "--server-port", str(port), "--dtype", cfg["dtype"], "--tp", str(cfg["tp"]),
                "--quant-policy", str(cfg["quant_policy"]),
                "--cache-max-entry-count", str(cfg["cache_max_entry_count"])]
        if cfg.get("model_format"):
            argv += ["--model-format", cfg["model_format"]]
        if cfg.get("session_len"):
            argv += ["--session-len", str(cfg["session_len"])]
        if self.backend == "pytorch":
            argv += ["--device", cfg["device_type"]]
            if cfg.get("eager_mode"):
                argv.append("--eager-mode")
        if self.speculative_config:
            spec = self.speculative_config
            argv += ["--speculative-algorithm", spec["method"],
                     "--speculative-num-draft-tokens", str(spec["num_speculative_tokens"])]
            if spec.get("model"):
                argv += ["--speculative-draft-model", spec["model"]]
        return argv

    def build(self) -> tuple[Any, Any]:
        """LMDeploy's own (engine config, SpeculativeConfig or None), for lmdeploy.pipeline(model_path,
        backend_config=..., speculative_config=...). Needs lmdeploy installed."""
        try:
            from lmdeploy.messages import PytorchEngineConfig, SpeculativeConfig, TurbomindEngineConfig
        except ImportError as exc:
            raise EngineConfigError(
                f"building LMDeploy's config objects needs lmdeploy (checked: {LMDEPLOY_VERSION_CHECKED}): "
                f"pip install 'accel[engines-lmdeploy]' ({exc})"
            ) from None
        engine_class = TurbomindEngineConfig if self.backend == "turbomind" else PytorchEngineConfig
        spec = SpeculativeConfig(**self.speculative_config) if self.speculative_config else None
        return engine_class(**self.engine_config), spec

    def validate(self) -> dict[str, Any]:
        """Check this deployment with the installed LMDeploy, without a GPU: its config classes accept the
        arguments, its own `lmdeploy serve api_server` parser reads the command line back to the same engine and
        speculative settings, and (PyTorch engine) its quantization loader accepts the artifact's config.json.
        Returns what LMDeploy made of it; raises EngineConfigError on any disagreement."""
        engine, spec = self.build()
        try:
            from lmdeploy.cli.cli import CLI
            from lmdeploy.cli.serve import SubCliServe
            from lmdeploy.cli.utils import get_speculative_config
        except ImportError as exc:
            raise EngineConfigError(
                f"LMDeploy's CLI did not import ({exc}); checked: {LMDEPLOY_VERSION_CHECKED}"
            ) from None
        if "api_server" not in SubCliServe.subparsers.choices:  # registered once per process
            SubCliServe.add_parsers()
        args = CLI.parser.parse_args(self.api_server_argv()[1:])
        parsed = {key: getattr(args, key) for key in ("backend", "dtype", "tp", "quant_policy", "model_format",
                                                      "session_len", "cache_max_entry_count")}
        expected = {"backend": self.backend, **{key: self.engine_config.get(key) for key in parsed if key != "backend"}}
        if self.backend == "pytorch":
            parsed.update(device_type=args.device, eager_mode=args.eager_mode)
            expected.update(device_type=self.engine_config["device_type"], eager_mode=self.engine_config["eager_mode"])
        if parsed != expected:
            raise EngineConfigError(f"lmdeploy's parser read the command line as {parsed}, expected {expected}")
        parsed_spec = get_speculative_config(args)
        if (parsed_spec is None) != (spec is None) or (spec is not None and vars(parsed_spec) != vars(spec)):
            raise EngineConfigError(f"lmdeploy's parser read the speculative config as {parsed_spec}, expected {spec}")
        report: dict[str, Any] = {
            "engine_config": type(engine).__name__, "quant_policy": int(engine.quant_policy),
            "model_format": engine.model_format, "speculative": None if spec is None else vars(spec),
        }
        if self.backend == "pytorch":
            from lmdeploy.pytorch.config import QuantizationConfig
            from transformers import AutoConfig

            quant = QuantizationConfig.from_config(AutoConfig.from_pretrained(self.model_path))
            report["pytorch_quantization"] = {"quant_method": quant.quant_method, "bits": quant.bits,
                                              "group_size": quant.group_size}
        return report


def _turbomind_weights(artifact: ArtifactSummary) -> tuple[str | None, str | None]:
    """(model_format, None) when TurboMind loads these weights, else (None, why not)."""
    if artifact.format == "dense":
        return "hf", None
    scheme = artifact.scheme
    if scheme is None:
        return None, "TurboMind reads one compressed-tensors config group; this artifact mixes precisions"
    method = "awq" if artifact.format == "autoawq-gemm" else "compressed-tensors"
    if method == "compressed-tensors" and (scheme.format != "pack-quantized" or scheme.num_bits != 4
                                           or scheme.activations is not None):
        return None, (f"TurboMind's compressed-tensors loader takes pack-quantized int4 weight-only, the artifact has "
                      f"{scheme.format} {scheme.num_bits}-bit {scheme.type}"
                      + (" with quantized activations" if scheme.activations else ""))
    if scheme.group_size not in TURBOMIND_GROUP_SIZES[method]:
        asked = artifact.accel_config.quantization.group_size
        why = "" if asked == scheme.group_size else (
            f" (the profile's group size {asked} does not divide every input width, so accel stored it as "
            f"{scheme.group_size})")
        return None, (f"TurboMind takes {method} group sizes {TURBOMIND_GROUP_SIZES[method]}, the artifact stores "
                      f"group size {scheme.group_size}{why}: quantize with a group size in "
                      f"{TURBOMIND_GROUP_SIZES[method]} that divides the model's widths")
    return method, None


def _pytorch_weights(artifact: ArtifactSummary) -> tuple[str | None, str | None]:
    """(model_format, None) when the PyTorch engine loads these weights, else (None, why not)."""
    if artifact.format == "dense":
        return None, None  # model_format None: plain Hugging Face weights
    if artifact.format == "autoawq-gemm":
        return "awq", None
    scheme = artifact.scheme
    if scheme is None:
        return None, "the PyTorch engine reads one compressed-tensors config group; this artifact mixes precisions"
    wanted = (scheme.format == "pack-quantized" and scheme.num_bits == 4 and scheme.type == "int" and scheme.symmetric
              and scheme.strategy == "group" and scheme.group_size == PYTORCH_CT_GROUP_SIZE and not scheme.activations)
    if not wanted:
        return None, (f"the PyTorch engine takes compressed-tensors only as pack-quantized int4, symmetric, group "
                      f"size {PYTORCH_CT_GROUP_SIZE}, weight-only; the artifact has {scheme.format} "
                      f"{scheme.num_bits}-bit {scheme.type}, {'symmetric' if scheme.symmetric else 'asymmetric'}, "
                      f"group size {scheme.group_size}" + (", quantized activations" if scheme.activations else ""))
    return "compressed-tensors", None


def _quant_policy(config: AccelConfig) -> tuple[int, list[str]]:
    bits, kind, notes = kv_choice(config)
    if bits == 16:
        return 0, notes
    if kind == "float":
        return 16, notes  # QuantPolicy.FP8 (e4m3)
    strategy = config.quantization.kv_strategy
    notes.append(f"LMDeploy quantizes K/V to int{bits} online per head and token (accel's kv_strategy {strategy!r} "
                 "and any calibrated kv scales in the artifact are not used)")
    return bits, notes


def _speculative(config: AccelConfig) -> dict[str, Any] | None:
    spec = config.speculative
    if spec is None or not spec.enabled:
        return None
    if spec.strategy not in SPECULATIVE_METHODS:
        raise EngineConfigError(
            f"speculative.strategy {spec.strategy!r} has no LMDeploy {LMDEPLOY_VERSION_CHECKED} counterpart (LMDeploy "
            f"runs {', '.join(SPECULATIVE_METHODS)}, each with a trained draft head); set speculative.enabled false "
            "to serve on LMDeploy without it, name one of those methods with speculative.draft_model, or serve "
            "with vLLM, which runs ngram and draft_model"
        )
    if not spec.draft_model:
        raise EngineConfigError(
            f"speculative.strategy {spec.strategy!r} needs speculative.draft_model (the path of its draft head)"
        )
    return {"method": spec.strategy, "model": spec.draft_model, "num_speculative_tokens": spec.num_speculative_tokens}


def lmdeploy_deployment(
    artifact: str | Path | ArtifactSummary,
    config: AccelConfig | None = None,
    *,
    backend: str | None = None,
    tp: int = 1,
    cache_max_entry_count: float = 0.8,
    session_len: int | None = None,
    verify: bool = True,
) -> LMDeployDeployment:
    """Map an artifact (and the AccelConfig to serve it with; default: the one in its manifest) to LMDeploy.

    backend None picks TurboMind when it can load the weights, the KV policy and the speculative config, else
    the PyTorch engine; a backend that cannot is refused with the reason. session_len defaults to the profile's
    max_sequence_length (capped by the model's max_position_embeddings).
    """
    summary = artifact if isinstance(artifact, ArtifactSummary) else read_artifact(artifact, verify=verify)
    config = resolve_config(summary, config)
    if backend is not None and backend not in BACKENDS:
        raise EngineConfigError(f"backend {backend!r} is not an LMDeploy engine; use one of {', '.join(BACKENDS)}")
    if tp < 1 or not 0 < cache_max_entry_count < 1:
        raise EngineConfigError(
            f"tp must be >= 1 and cache_max_entry_count in (0, 1), got tp={tp}, "
            f"cache_max_entry_count={cache_max_entry_count}"
        )
    policy, notes = _quant_policy(config)
    device = DEVICES.get(config.quantization.kernel_backend)
    if device is None:
        raise EngineConfigError(
            f"quantization.kernel_backend {config.quantization.kernel_backend!r} has no LMDeploy device (LMDeploy's "
            "PyTorch engine runs cuda, ascend and camb); use kernel_backend auto, cuda, ascend or mlu"
        )
    turbomind, why_not_tm = _turbomind_weights(summary)
    pytorch, why_not_pt = _pytorch_weights(summary)
    speculative = _speculative(config)
    if speculative is not None:
        why_not_tm = why_not_tm or "TurboMind does not run speculative decoding (LMDeploy ignores it there)"
    if policy == 16:
        why_not_tm = why_not_tm or "TurboMind has no fp8 KV cache (quant_policy 16 is the PyTorch engine's)"
    if device != "cuda":
        why_not_tm = why_not_tm or f"TurboMind runs on CUDA only, the profile's kernel backend is {device}"
        if policy and device not in ("cuda", "ascend"):
            why_not_pt = why_not_pt or f"LMDeploy's KV cache quantization runs on cuda and ascend, not {device}"
    chosen = backend or ("turbomind" if why_not_tm is None else "pytorch")
    why_not = why_not_tm if chosen == "turbomind" else why_not_pt
    if why_not is not None:
        other = "pytorch" if chosen == "turbomind" else "turbomind"
        other_why = why_not_pt if chosen == "turbomind" else why_not_tm
        raise EngineConfigError(
            f"LMDeploy {chosen} cannot serve {summary.path}: {why_not}"
            + (f"; the {other} engine can (backend={other!r})" if other_why is None
               else f"; nor can {other}: {other_why}")
        )
    quant = config.quantization
    limit = summary.max_position_embeddings
    session = session_len or (min(quant.max_sequence_length, limit) if limit else quant.max_sequence_length)
    engine: dict[str, Any] = {
        "dtype": DTYPES.get(summary.dtype, "auto"), "tp": tp, "session_len": session,
        "cache_max_entry_count": cache_max_entry_count, "quant_policy": policy,
        "model_format": turbomind if chosen == "turbomind" else pytorch,
    }
    if chosen == "pytorch":
        engine["device_type"] = device
        engine["eager_mode"] = not config.enable_cuda_graphs
    if summary.sparsity:
        notes.append("LMDeploy loads the dense weights (zeros included); accel's compact sparse form is not used")
    return LMDeployDeployment(chosen, str(summary.path), engine, speculative, tuple(notes))
