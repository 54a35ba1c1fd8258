"""prune_model: prune a causal LM's decoder linears layer by layer, calibrating where the method needs it.

For each decoder layer, with the inputs that the already-pruned layers before it produce (SparseGPT's and
Wanda's sequential procedure):
1. run the dense layer on every calibration batch, observing each input-sharing linear group's input with the
   quantization pipeline's observers (H = (1/N) sum x x^T for SparseGPT, ||X_j||_2 for Wanda);
2. prune every targeted linear: its method picks the mask in the pattern's registered format and returns the
   kept weights (SparseGPT updates them), and the mask is checked against the format;
3. run the pruned layer to produce the next layer's inputs.
Magnitude pruning needs no forwards: every linear is pruned from its weight alone.
"""

from __future__ import annotations

import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.errors import UnsupportedProfileError
from accel.plugins.registry import PluginRegistry
from accel.quantization.calibration import InputObserver, calibration_data
from accel.quantization.method import LinearStats
from accel.quantization.pipeline import MAX_SAMPLE_ROWS, capture_first_layer_inputs, linear_groups
from accel.runtime.mixed_precision import matches
from accel.schema import QuantizationProfile, SparsityConfig
from accel.sparsity.method import PruningMethod, SparsityTarget

TARGET_KINDS = {"linear": "", "attention": "self_attn.", "mlp": "mlp."}


@dataclass
class PruningResult:
    """What prune_model did: per-layer records, the masks (True = kept), calibration size, time, peak memory."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)
    calibration_tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0


def layer_ratio(name: str, config: SparsityConfig) -> float | None:
    """The ratio for decoder linear `name` (its name inside the model), or None when it stays dense.

    Ignored names stay dense; otherwise the first layer_ratios target that matches sets the ratio (0 = dense).
    """
    kind = TARGET_KINDS[config.targets]
    if kind and f".{kind}" not in f".{name}":
        return None
    if any(matches(target, name) for target in config.ignore):
        return None
    ratio = next((r for target, r in config.layer_ratios.items() if matches(target, name)), config.ratio)
    return ratio if ratio > 0 else None


def _output_error(weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor | None) -> float | None:
    """||X W^T - X W'^T|| / ||X W^T|| on the sampled inputs: how much the layer's output moved."""
    if inputs is None or len(inputs) == 0:
        return None
    reference = inputs @ weight.T
    return float((reference - inputs @ pruned.float().T).norm() / reference.norm().clamp_min(1e-12))


class _LayerPruner:
    """The method, config and registry of one prune_model run."""

    def __init__(self, config: SparsityConfig, registry: PluginRegistry, method: PruningMethod) -> None:
        self.config = config
        self.method = method
        self.format = registry.sparse_format_for(config.pattern)
        self.result = PruningResult()

    def ratios(self, prefix: str, layer: nn.Module) -> dict[str, float]:
        """Linear name inside the layer -> its ratio, for the linears this run prunes."""
        names = [name for name, module in layer.named_modules() if isinstance(module, nn.Linear)]
        return {name: ratio for name in names if (ratio := layer_ratio(f"{prefix}.{name}", self.config)) is not None}

    def prune_linear(self, prefix: str, layer: nn.Module, name: str, ratio: float, stats: LinearStats | None) -> None:
        linear = layer.get_submodule(name)
        weight = linear.weight.data.float()
        target = SparsityTarget(self.format, self.config.pattern, ratio, self.config.block_shape)
        pruned = self.method.prune_weight(weight, target, stats)
        full_name = f"{prefix}.{name}"
        problems = target.violations(pruned.mask)
        if problems or bool((pruned.weight[~pruned.mask] != 0).any()):
            raise ValueError(
                f"{full_name}: pruning method {self.config.method!r} returned a mask that is not "
                f"{self.config.pattern} ({'; '.join(problems) or 'dropped weights are not zero'})"
            )
        linear.weight.data = pruned.weight.to(linear.weight.dtype)
        self.result.masks[full_name] = pruned.mask.cpu()
        self.result.layers[full_name] = {
            "method": self.config.method, "pattern": self.config.pattern, "ratio": ratio,
            "sparsity": float(1 - pruned.mask.float().mean()),
            "output_error": _output_error(weight, pruned.weight, None if stats is None else stats.inputs),
        }

    def prune_layer(self, prefix: str, layer: nn.Module, run: Any, hidden: list[torch.Tensor]) -> None:
        """Steps 1-2 of the module docstring for one decoder layer; `run` re-runs it on `hidden`."""
        ratios = self.ratios(prefix, layer)
        if not ratios:
            return
        stats: dict[str, LinearStats] = {}
        if self.method.requires_calibration:
            observers: dict[str, InputObserver] = {}
            handles = []
            for _, linears in linear_groups(layer):
                if not any(name in ratios for name in linears):
                    continue
                first = layer.get_submodule(linears[0])
                observer = InputObserver(first.in_features, hessian=self.method.needs_hessian,
                                         max_rows=MAX_SAMPLE_ROWS, expected_batches=len(hidden))
                observers.update({name: observer for name in linears})
                handles.append(first.register_forward_pre_hook(lambda _m, args, obs=observer: obs.update(args[0])))
            try:
                run(hidden)
            finally:
                for handle in handles:
                    handle.remove()
            shared = {id(o): o.stats() for o in observers.values()}  # one LinearStats per input-sharing group
            stats = {name: shared[id(observer)] for name, observer in observers.items()}
        for name, ratio in ratios.items():
            self.prune_linear(prefix, layer, name, ratio, stats.get(name))


def _decoder_layers(model: PreTrainedModel) -> nn.ModuleList:
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise UnsupportedProfileError(
            f"{type(model).__name__}: pruning walks model.model.layers (the Llama-family layout); this model has none"
        )
    return layers


def prune_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: SparsityConfig,
    registry: PluginRegistry,
    *,
    calibration: QuantizationProfile | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> PruningResult:
    """Prune `model` in place as `config` says; see the module docstring for the procedure.

    `calibration` names the calibration text and its size (the profile's calibration_* fields; default: the
    bundled corpus, 64 samples of 256 tokens), used only by methods that need calibration.
    """
    if config.pattern == "none":
        raise UnsupportedProfileError("sparsity.pattern is 'none': pick 2:4, 4:8, block or unstructured to prune")
    start = time.perf_counter()
    spec = registry.pruning_method(config.method)
    method = spec.factory(spec.config_model.model_validate(config.method_config))
    worker = _LayerPruner(config, registry, method)
    layers = _decoder_layers(model)
    bar = tqdm(range(len(layers)), desc=f"prune ({config.method})", unit="layer", disable=not progress,
               file=sys.stderr)
    with torch.inference_mode(False), torch.no_grad():
        if method.requires_calibration:
            ids = calibration_data(tokenizer, calibration or QuantizationProfile())
            batches = list(ids.to(next(model.parameters()).device).split(batch_size))  # [batch, seq_len] each
            worker.result.calibration_tokens = ids.numel()
            hidden, kwargs_list = capture_first_layer_inputs(model, batches)
            for index in bar:
                layer = layers[index]

                def run(states: list[torch.Tensor], layer: nn.Module = layer) -> list[torch.Tensor]:
                    outputs = []
                    for h, kwargs in zip(states, kwargs_list, strict=True):
                        out = layer(h, **kwargs)
                        outputs.append(out[0] if isinstance(out, tuple) else out)
                    return outputs

                worker.prune_layer(f"model.layers.{index}", layer, run, hidden)
                hidden = run(hidden)
        else:
            for index in bar:
                worker.prune_layer(f"model.layers.{index}", layers[index], None, [])
    worker.result.seconds = time.perf_counter() - start
    worker.result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return worker.result
