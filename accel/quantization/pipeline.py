"""quantize_model: calibrate and quantize a causal LM decoder layer by decoder layer.

For each decoder layer, with the inputs that the already-quantized layers before it produce:
1. run the full-precision layer on every calibration batch, observing each linear group's input;
2. let the method choose smoothing scales per group and fold them into the weights (AWQ, SmoothQuant);
3. quantize every linear with its (smoothed) input statistics and swap in a QuantLinear;
4. run the quantized layer to produce the next layer's inputs (errors propagate, as in GPTQ's pipeline).
Peak memory stays near one layer's activations for the calibration set plus the model.

A profile with a sparsity_pattern quantizes a pruned model and keeps its mask: the zeros of each weight are passed
to the method (LinearStats.keep) and their codes are then set to the zero code, so they dequantize to exactly 0.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from accel.plugins.registry import PluginRegistry
from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.calibration import InputObserver, calibration_data, scale_stats
from accel.quantization.method import LinearStats, QuantMethod, SmoothGroup
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import QuantizedWeight, zero_dropped
from accel.runtime.mixed_precision import LayerScheme, resolve_scheme
from accel.schema import QuantizationProfile

# Llama-family decoder layer: (op producing the input, linears reading it). Folding s into the producer:
# a norm's weight / s, or a linear's output rows / s; the readers' input columns * s.
LLAMA_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("input_layernorm", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("self_attn.v_proj", ("self_attn.o_proj",)),
    ("post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.up_proj", ("mlp.down_proj",)),
)
SCALE_DTYPE = torch.float16  # scales as the artifact stores them, so the model evaluated is the one shipped
MAX_SAMPLE_ROWS = 4096


class _StopForward(Exception):
    """Raised by the first layer's hook once its inputs are captured."""


@dataclass
class QuantizationResult:
    """What quantize_model did: per-layer choices, KV scales, calibration size, time and peak memory."""

    layers: dict[str, dict[str, Any]] = field(default_factory=dict)
    kv_scales: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    calibration_tokens: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0


def linear_groups(layer: nn.Module) -> list[tuple[str | None, tuple[str, ...]]]:
    """Input-sharing linear groups of a decoder layer (Llama layout, else each linear alone)."""
    names = {name for name, module in layer.named_modules() if isinstance(module, nn.Linear)}
    llama = {linear for _, linears in LLAMA_GROUPS for linear in linears}
    if llama <= names:
        rest = sorted(names - llama)
        return [*LLAMA_GROUPS, *((None, (name,)) for name in rest)]
    return [(None, (name,)) for name in sorted(names)]


def _can_fold(layer: nn.Module, producer: str | None, linears: list[nn.Linear]) -> bool:
    """Smoothing is exact only when the producer's output channels are exactly the readers' inputs."""
    if producer is None:
        return False
    module = layer.get_submodule(producer)
    width = linears[0].in_features
    if isinstance(module, nn.Linear):  # v_proj -> o_proj fails under GQA (out 192 != in 576)
        return module.out_features == width
    weight = getattr(module, "weight", None)
    return weight is not None and weight.ndim == 1 and weight.numel() == width


def _fold(layer: nn.Module, producer: str, linears: list[nn.Linear], s: torch.Tensor) -> None:
    """producer output / s, readers' input columns * s: X W^T = (X / s)(W diag(s))^T."""
    module = layer.get_submodule(producer)
    with torch.no_grad():
        if isinstance(module, nn.Linear):
            module.weight.div_(s.to(module.weight.dtype)[:, None])
            if module.bias is not None:
                module.bias.div_(s.to(module.bias.dtype))
        else:
            module.weight.div_(s.to(module.weight.dtype))
            if getattr(module, "bias", None) is not None:
                module.bias.div_(s.to(module.bias.dtype))
        for linear in linears:
            linear.weight.mul_(s.to(linear.weight.dtype)[None, :])


def _output_error(weight: torch.Tensor, qweight: QuantizedWeight, inputs: torch.Tensor | None) -> float | None:
    """||X W^T - X W^^T|| / ||X W^T|| on the sampled inputs: how much the layer's output moved."""
    if inputs is None or len(inputs) == 0:
        return None
    reference = inputs @ weight.float().T
    return float((reference - inputs @ qweight.dequantize(torch.float32).T).norm() / reference.norm().clamp_min(1e-12))


class _LayerQuantizer:
    """Holds the methods, profile and observers for one quantize_model run."""

    def __init__(self, profile: QuantizationProfile, registry: PluginRegistry, num_batches: int) -> None:
        self.profile = profile
        self.registry = registry
        self.num_batches = num_batches
        self.methods: dict[str, QuantMethod] = {}
        self.act_args = ActivationQuantArgs.from_profile(profile)
        self.result = QuantizationResult()

    def method(self, name: str) -> QuantMethod:
        if name not in self.methods:
            spec = self.registry.quant_method(name)
            settings = self.profile.method_config if name == self.profile.method else {}
            self.methods[name] = spec.factory(spec.config_model.model_validate(settings))
        return self.methods[name]

    def needs_forward(self, schemes: dict[str, LayerScheme]) -> bool:
        """Calibration forwards are needed for methods that use statistics, static scales or KV scales."""
        static_act = self.act_args is not None and not self.act_args.dynamic
        return static_act or self.profile.quantizes_kv or any(
            self.method(s.method).requires_calibration for s in schemes.values()
        )

    def quantize_layer(
        self, prefix: str, layer: nn.Module, run: Any, hidden: list[torch.Tensor]
    ) -> None:
        """Steps 1-3 of the module docstring for one decoder layer; `run` re-runs it on `hidden`."""
        groups = linear_groups(layer)
        schemes = {
            name: scheme
            for _, linears in groups
            for name in linears
            if (scheme := resolve_scheme(f"{prefix}.{name}", self.profile)) is not None
        }
        if not schemes:
            return
        stats: dict[str, LinearStats] = {}
        absmax: dict[str, torch.Tensor] = {}
        if self.needs_forward(schemes):
            needs_hessian = any(self.method(s.method).needs_hessian for s in schemes.values())
            observers = self._observe(layer, groups, run, hidden, needs_hessian)
            for producer, linears in groups:
                group_stats, group_absmax = observers[linears[0]].stats(), observers[linears[0]].absmax
                s = self._smooth(prefix, layer, producer, linears, schemes, group_stats, group_absmax)
                if s is not None:
                    group_stats, group_absmax = scale_stats(group_stats, s), group_absmax / s.float()
                for name in linears:
                    stats[name], absmax[name] = group_stats, group_absmax
        for name, scheme in schemes.items():
            self.swap_module(layer, prefix, name, scheme, stats.get(name), absmax.get(name))

    def _observe(
        self, layer: nn.Module, groups: list, run: Any, hidden: list[torch.Tensor], needs_hessian: bool
    ) -> dict[str, InputObserver]:
        observers: dict[str, InputObserver] = {}
        handles = []
        for _, linears in groups:
            first = layer.get_submodule(linears[0])
            observer = InputObserver(
                first.in_features, hessian=needs_hessian, max_rows=MAX_SAMPLE_ROWS, expected_batches=self.num_batches
            )
            observers[linears[0]] = observer
            handles.append(first.register_forward_pre_hook(lambda _m, args, obs=observer: obs.update(args[0])))
        try:
            run(hidden)
        finally:
            for handle in handles:
                handle.remove()
        return observers

    def _smooth(
        self, prefix: str, layer: nn.Module, producer: str | None, linears: tuple[str, ...],
        schemes: dict[str, LayerScheme], stats: LinearStats, absmax: torch.Tensor,
    ) -> torch.Tensor | None:
        chosen = {schemes[name].method for name in linears if name in schemes}
        modules = [layer.get_submodule(name) for name in linears]
        if len(chosen) != 1 or stats.inputs is None or not _can_fold(layer, producer, modules):
            return None
        method = self.method(chosen.pop())
        first = next(schemes[name] for name in linears if name in schemes)
        group = SmoothGroup(
            name=f"{prefix}.{producer}",
            weights={name: m.weight.data.float() for name, m in zip(linears, modules, strict=True)},
            inputs=stats.inputs,
            act_absmax=absmax,
        )
        s = method.smooth(group, first.args)
        if s is None:
            return None
        if s.shape != (modules[0].in_features,) or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
            raise ValueError(f"{prefix}.{producer}: smoothing scales must be finite, positive, [in]; got {s}")
        _fold(layer, producer, modules, s.float())
        self.result.layers.setdefault(f"{prefix}.{producer}", {})["smoothed_into"] = list(linears)
        return s.float()

    def swap_module(
        self, layer: nn.Module, prefix: str, name: str, scheme: LayerScheme,
        stats: LinearStats | None, absmax: torch.Tensor | None,
    ) -> None:
        """Quantize `layer.<name>` with `scheme` and put a QuantLinear in its place."""
        linear = layer.get_submodule(name)
        weight = linear.weight.data.float()
        keep = weight != 0 if self.profile.sparsity_pattern != "none" else None
        if keep is not None:
            stats = replace(stats, keep=keep) if stats is not None else LinearStats(keep=keep)
        qweight = self.method(scheme.method).quantize_weight(weight, scheme.args, stats)
        qweight.scale = qweight.scale.to(SCALE_DTYPE)
        zeros_restored = None
        if keep is not None:
            qweight, zeros_restored = zero_dropped(qweight, keep)
        input_scale = None
        if self.act_args is not None and not self.act_args.dynamic and absmax is not None:
            input_scale = (absmax.amax().clamp_min(1e-12) / self.act_args.qmax).reshape(1).to(torch.float32)
        bias = None if linear.bias is None else linear.bias.data.clone()
        quantized = QuantLinear(qweight, bias, self.act_args, input_scale).to(linear.weight.device)
        parent_name, _, child = name.rpartition(".")
        setattr(layer.get_submodule(parent_name) if parent_name else layer, child, quantized)
        self.result.layers.setdefault(f"{prefix}.{name}".lstrip("."), {}).update({
            **scheme.describe(),
            "activations": None if self.act_args is None else f"{self.act_args.type}{self.act_args.num_bits}",
            "output_error": _output_error(weight, qweight, None if stats is None else stats.inputs),
        })
        if zeros_restored is not None:
            # Dropped weights the method gave a non-zero code (0 for methods that honour LinearStats.keep).
            self.result.layers[f"{prefix}.{name}".lstrip(".")]["zeros_restored"] = zeros_restored


def _calibration_needed(model: PreTrainedModel, worker: _LayerQuantizer) -> bool:
    """True if any layer's scheme needs calibration forwards (statistics, static scales, KV scales)."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    schemes = {name: scheme for name in names if (scheme := resolve_scheme(name, worker.profile)) is not None}
    return worker.needs_forward(schemes)


def _quantize_head(model: PreTrainedModel, worker: _LayerQuantizer, hidden: list[torch.Tensor]) -> None:
    """Quantize lm_head too when the profile does not ignore it (inputs: the final norm of the last hidden)."""
    scheme = resolve_scheme("lm_head", worker.profile)
    head = getattr(model, "lm_head", None)
    if scheme is None or not isinstance(head, nn.Linear):
        return
    stats = None
    if worker.method(scheme.method).requires_calibration:
        needs_hessian = worker.method(scheme.method).needs_hessian
        observer = InputObserver(
            head.in_features, hessian=needs_hessian, max_rows=MAX_SAMPLE_ROWS, expected_batches=len(hidden)
        )
        for h in hidden:
            observer.update(model.model.norm(h))
        stats = observer.stats()
    if getattr(model.config, "tie_word_embeddings", False):
        # The embedding keeps its full-precision copy; the quantized head is its own tensor now.
        head = nn.Linear(head.in_features, head.out_features, bias=False)
        head.weight = nn.Parameter(model.lm_head.weight.data.clone())
        model.lm_head = head
        model.config.tie_word_embeddings = False
    worker.swap_module(model, "", "lm_head", scheme, stats, None)


def capture_first_layer_inputs(
    model: PreTrainedModel, batches: list[torch.Tensor]
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Run the model up to its first decoder layer for each batch; keep that layer's inputs and kwargs."""
    hidden: list[torch.Tensor] = []
    kwargs_list: list[dict[str, Any]] = []

    def hook(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        hidden.append(args[0] if args else kwargs.pop("hidden_states"))
        kwargs_list.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
        raise _StopForward

    handle = model.model.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_StopForward):
                model(input_ids=batch, use_cache=False)
    finally:
        handle.remove()
    return hidden, kwargs_list


def _kv_scale_hooks(layer: nn.Module, store: dict[str, list[torch.Tensor]]) -> list:
    """Observe K (post-RoPE bound) and V absmax at the layer's k_proj / v_proj outputs.

    RoPE rotates channel pairs (i, i + d/2) of each head, so max over pairs of sqrt(k_i^2 + k_{i+d/2}^2)
    bounds |k| after rotation at any position.
    """
    attention = layer.self_attn
    head_dim = attention.head_dim

    def on_k(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        heads = out.detach().float().reshape(*out.shape[:-1], -1, head_dim)
        half = head_dim // 2
        pair_norm = (heads[..., :half].square() + heads[..., half:].square()).sqrt()
        store["k"].append(pair_norm.amax().reshape(1))

    def on_v(_m: nn.Module, _args: tuple, out: torch.Tensor) -> None:
        store["v"].append(out.detach().float().abs().amax().reshape(1))

    return [attention.k_proj.register_forward_hook(on_k), attention.v_proj.register_forward_hook(on_v)]


def _weight_only_layers(model: PreTrainedModel, worker: _LayerQuantizer, progress: bool) -> None:
    """Every layer quantized from its weights alone (RTN-like, dynamic activations, no KV scales)."""
    layers = model.model.layers
    for index in tqdm(range(len(layers)), desc="quantize", unit="layer", disable=not progress, file=sys.stderr):
        worker.quantize_layer(f"model.layers.{index}", layers[index], None, [])


def _calibrated_layers(
    model: PreTrainedModel, worker: _LayerQuantizer, batches: list[torch.Tensor], progress: bool
) -> list[torch.Tensor]:
    """Steps 1-4 of the module docstring for every decoder layer; returns the last layer's outputs."""
    profile = worker.profile
    kv_qmax = 448.0 if profile.kv_type == "float" else 127.0
    hidden, kwargs_list = capture_first_layer_inputs(model, batches)
    layers = model.model.layers
    for index in tqdm(range(len(layers)), desc="quantize", unit="layer", disable=not progress, file=sys.stderr):
        layer, prefix = layers[index], f"model.layers.{index}"

        def run(states: list[torch.Tensor], layer: nn.Module = layer) -> list[torch.Tensor]:
            outputs = []
            for h, kwargs in zip(states, kwargs_list, strict=True):
                out = layer(h, **kwargs)
                outputs.append(out[0] if isinstance(out, tuple) else out)
            return outputs

        worker.quantize_layer(prefix, layer, run, hidden)
        kv_store: dict[str, list[torch.Tensor]] = {"k": [], "v": []}
        handles = _kv_scale_hooks(layer, kv_store) if profile.quantizes_kv else []
        try:
            hidden = run(hidden)
        finally:
            for handle in handles:
                handle.remove()
        if handles:
            k_scale = torch.cat(kv_store["k"]).amax() / kv_qmax
            v_scale = torch.cat(kv_store["v"]).amax() / kv_qmax
            worker.result.kv_scales[f"{prefix}.self_attn"] = (k_scale.reshape(1), v_scale.reshape(1))
    return hidden


def quantize_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    profile: QuantizationProfile,
    registry: PluginRegistry,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> QuantizationResult:
    """Quantize `model` in place as `profile` says; see the module docstring for the procedure."""
    start = time.perf_counter()
    worker = _LayerQuantizer(profile, registry, num_batches=0)
    with torch.inference_mode(False), torch.no_grad():
        if _calibration_needed(model, worker):
            ids = calibration_data(tokenizer, profile).to(next(model.parameters()).device)  # [n, seq_len]
            batches = list(ids.split(batch_size))
            worker.num_batches = len(batches)
            worker.result.calibration_tokens = ids.numel()
            hidden = _calibrated_layers(model, worker, batches, progress)
        else:
            _weight_only_layers(model, worker, progress)
            hidden = []
        _quantize_head(model, worker, hidden)
    worker.result.seconds = time.perf_counter() - start
    worker.result.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return worker.result
