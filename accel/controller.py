"""AccelController: the one object a serving stack talks to. It validates a config against the installed
plugins and the device, picks the kernel backend, and keeps the statistics the runtime reports."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from accel.compat import CompatReport, check_config
from accel.errors import UnsupportedProfileError
from accel.plugins.registry import PluginRegistry, get_registry
from accel.schema import AccelConfig, CoTConfig

if TYPE_CHECKING:
    import torch

    from accel.speculative.cot_controller import CoTResult


class AccelController:
    """Set up once with an AccelConfig; later issues add quantization, speculation and CoT on top."""

    def __init__(self, registry: PluginRegistry | None = None) -> None:
        self.registry = registry or get_registry()
        self._config: AccelConfig | None = None
        self._compat: CompatReport | None = None
        self._stats: dict[str, Any] = {}
        self._target: Any = None  # (model, tokenizer) for speculative decoding, loaded on first use
        self._drafter: Any = None  # (SpeculativeConfig, DraftStrategy) built for it, reused by accelerate_cot

    @property
    def config(self) -> AccelConfig:
        if self._config is None:
            raise RuntimeError("AccelController.setup(config) has not been called yet")
        return self._config

    def setup(self, config: AccelConfig) -> CompatReport:
        """Validate `config` against the plugins and the device and select the kernel backend.

        Raises UnsupportedProfileError listing every reason when the config cannot run here.
        """
        start = time.perf_counter()
        report = check_config(config, self.registry)
        if not report.ok:
            raise UnsupportedProfileError(
                f"the config cannot run on {report.capability.device_name} (backend {report.backend}):\n- "
                + "\n- ".join(report.reasons)
            )
        self._config, self._compat = config, report
        self._stats = {
            "scheme": config.quantization.scheme_name(),
            "method": config.quantization.method,
            "backend": report.backend,
            "device": report.capability.device_name,
            "device_type": report.capability.device_type,
            "speculative": config.speculative.strategy if config.speculative else None,
            "setup_seconds": time.perf_counter() - start,
        }
        return report

    def get_quantized_model(self, model_path: str | None = None, out: str | None = None) -> Any:
        """Load `model_path` (None: the bundled model), quantize it with the configured profile, and write
        the artifact to `out` when given. Returns the quantized model (QuantLinear layers in place)."""
        from pathlib import Path

        from accel.runtime.loaders import load_model
        from accel.tools.quantize import kernel_meta, quantize_loaded

        config = self.config
        model, tokenizer = load_model(model_path)
        result, _, _ = quantize_loaded(model, tokenizer, config, self.registry, evaluate=False, progress=False)
        if out is not None:
            from accel.runtime.artifact import save_artifact

            save_artifact(
                model, tokenizer, Path(out), config, source=model_path or "bundled",
                kv_scales=result.kv_scales or None, layer_choices=result.layers,
                kernel_meta=kernel_meta(self.registry, result.layers), overwrite=True,
            )
        self._stats["quantization"] = {
            "seconds": result.seconds, "calibration_tokens": result.calibration_tokens,
            "layers_quantized": sum("num_bits" in c for c in result.layers.values()),
        }
        return model

    def load_target(self, model_path: str | None = None) -> None:
        """Load the model that run_speculative_decode serves (None: the bundled model)."""
        from accel.runtime.loaders import load_model

        self._target = load_model(model_path)

    def run_speculative_decode(self, input_ids: Any, max_new_tokens: int, temperature: float = 0.0) -> Any:
        """Decode `input_ids` [1, T] with the configured speculative strategy; returns the new tokens [1, n].

        Per-request metrics (acceptance rate, mean accepted length, ...) are added to get_stats().
        """
        from accel.schema import SpeculativeConfig
        from accel.speculative.verifier import SamplingParams
        from accel.tools.speculative import run_speculative

        if self._target is None:
            self.load_target()
        model, tokenizer = self._target
        config = self.config.speculative or SpeculativeConfig()
        tokens, metrics = run_speculative(
            self.registry, config, model, tokenizer, input_ids, max_new_tokens, SamplingParams(temperature=temperature)
        )
        self._stats.setdefault("speculative_requests", []).append(metrics.to_dict())
        return tokens

    def accelerate_cot(self, input_ids: torch.Tensor, cot_config: CoTConfig | None = None) -> CoTResult:
        """Decode a reasoning prompt `input_ids` [1, T] with CoT acceleration; returns a CoTResult.

        `cot_config` (a CoTConfig) defaults to the configured cot_accel, else lossless. The configured
        speculative strategy drafts tokens in lossless mode; a model-based one (layer_skip, self_quant,
        draft_model) also writes the steps in step speculation. The result's summary goes into get_stats().
        """
        from accel.schema import SpeculativeConfig
        from accel.speculative.cot_controller import CoTAccelController
        from accel.tools.speculative import build_drafter

        if self._target is None:
            self.load_target()
        model, tokenizer = self._target
        config = cot_config or self.config.cot_accel or CoTConfig()
        speculative = self.config.speculative or SpeculativeConfig()
        if self._drafter is None or self._drafter[0] != speculative:
            self._drafter = (speculative, build_drafter(self.registry, speculative, model, tokenizer))
        drafter = self._drafter[1]
        controller = CoTAccelController(model, tokenizer, getattr(drafter, "model", None), config,
                                        speculative=speculative, token_drafter=drafter)
        result = controller.generate(input_ids)
        summary = {k: v for k, v in result.to_dict().items() if k not in ("text", "thinking_ids", "token_speculation")}
        self._stats.setdefault("cot_requests", []).append(summary)
        return result

    def get_stats(self) -> dict[str, Any]:
        """What the controller has done so far, JSON-ready: setup choices, plugins, kernels chosen."""
        plugins = self.registry.plugins
        return {
            **self._stats,
            "configured": self._config is not None,
            "plugins_loaded": sum(p.status == "loaded" for p in plugins),
            "plugins_failed": [p.name for p in plugins if p.status == "failed"],
            "kernel_meta": [choice.meta() for choice in self.registry.kernel_trace],
        }
