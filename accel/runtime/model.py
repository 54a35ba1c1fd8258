"""A plain PyTorch Llama-family decoder for inference (gpt-fast's model.py, with pluggable linear layers).

Llama, Mistral, Qwen2 (q/k/v biases) and SmolLM2 shapes, tied embeddings or not. One token's path:

    x = embed[token]                                                    [B, T, hidden]
    per layer:  h = x + o_proj(attention(rope(q), rope(k), v))           q/k/v from qkv_proj(rms_norm(x))
                x = h + down_proj(silu(gate) * up)                      gate/up from gate_up_proj(rms_norm(h))
    logits = lm_head(rms_norm(x))                                       [B, T, vocab]

rms_norm(x) = w * x / sqrt(mean(x^2) + eps), computed in float32 and cast back, as transformers does (op rms_norm:
one kernel launch where the device's backend has one).

The step's small elementwise work runs as fused kernel ops where the device's backend has them (vLLM's fusions):
each residual add with the norm after it (add_rms_norm: the layers pass the running residual along, so
`h = x + attn` is computed inside the next norm), RoPE on q and k together (rotary_embedding; at decode fused with
the KV cache write, rotary_kv_cache_write, through the cache), and SwiGLU's silu(gate) * up (silu_and_mul). In eager
torch these were ~16 kernels a layer, 1-3 us each in a CUDA graph. Under torch.compile every one of them traces its
reference, which Inductor fuses itself (the cache's writes run the backend's kernel, opaque to dynamo).
RoPE rotates each (i, i + d/2) pair of a head by angle pos * inv_freq[i], inv_freq[i] = theta^(-2i/d) (llama3 and
linear scaling adjust inv_freq). Attention has GQA: query head j reads KV head j // (heads / kv_heads).

Linear layers are accel.runtime.quant_backend's runtime modules, one class per layer format, each calling the
kernel the registry picked for its op; q/k/v and gate/up are stacked into one layer each when their format
allows (one kernel launch instead of three or two, the same outputs).

Two entry points share the layers: `prefill` runs a right-padded prompt batch with SDPA over the fresh K/V and
stores them in the static cache; `decode` runs T >= 1 new tokens per row after what the cache holds (decode at
T = 1, speculative verification at T > 1) and attends through the cache. Neither syncs with the host or branches
on data, so a decode step can be captured in a CUDA graph.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from accel.plugins.records import KernelChoice
from accel.plugins.registry import PluginRegistry
from accel.quantization.activation_quant import ActivationQuantArgs
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import FP8_DTYPE, QuantizedWeight, WeightQuantArgs
from accel.runtime import norm_ops
from accel.runtime.artifact import load_artifact
from accel.runtime.kv_cache import ATTENTION_OP, ROTARY_WRITE_OP, WRITE_OP, StaticKVCache, check_kv_format
from accel.runtime.ops import OPS
from accel.runtime.quant_backend import (
    FOLD_OPS,
    ROPE_KV_OP,
    SCALED_MM_OP,
    DenseLinear,
    KernelSelector,
    NormedActivation,
    QuantizedActivation,
    RuntimeLinear,
    W4A16Linear,
    fuse_linears,
    runtime_linear,
)

__all__ = [
    "RANDOM_QUANT",
    "DecoderModel",
    "ModelArgs",
    "from_artifact",
    "from_hf",
    "from_state_dict",
    "random_model",
]

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ROPE_TYPES = ("default", "linear", "llama3")
RANDOM_QUANT = ("none", "w4a16", "w4a16-asym", "w4a16-2:4", "w8a16", "w8a8-int8", "w8a8-fp8")
NORM_OP = "rms_norm"
ADD_NORM_OP = "add_rms_norm"
ROPE_OP = "rotary_embedding"
ACT_OP = "silu_and_mul"
NORM_QUANT_OP = "rms_norm_quant"
ADD_NORM_QUANT_OP = "add_rms_norm_quant"


# ---------------------------------------------------------------------------------------------- config


def _rope_parameters(config: PretrainedConfig) -> dict[str, Any]:
    """RoPE settings from transformers 5's `rope_parameters` or 4's `rope_theta` + `rope_scaling`."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, Mapping) and "rope_theta" in params:
        params = dict(params)
    else:
        scaling = dict(getattr(config, "rope_scaling", None) or {})
        params = {"rope_theta": getattr(config, "rope_theta", 10000.0), **scaling}
    params["rope_type"] = params.get("rope_type", params.get("type", "default"))
    if params["rope_type"] not in ROPE_TYPES:
        raise ValueError(
            f"rope type {params['rope_type']!r} (config rope_scaling / rope_parameters) is not "
            f"supported; the runtime implements {ROPE_TYPES}"
        )
    return params


@dataclass(frozen=True)
class ModelArgs:
    """The shapes and constants of a Llama-family decoder, read from a transformers config."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: dict[str, Any]
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool
    o_bias: bool
    mlp_bias: bool
    sliding_window: int | None

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> ModelArgs:
        """Refuses architectures this decoder does not implement, naming what differs."""
        model_type = getattr(config, "model_type", "")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"config.model_type {model_type!r} is not supported by the accel runtime; it runs "
                f"{SUPPORTED_MODEL_TYPES} decoders"
            )
        act = getattr(config, "hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"config.hidden_act {act!r} is not supported: the runtime's MLP is SwiGLU (silu)")
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        attention_bias = bool(getattr(config, "attention_bias", False))
        window = getattr(config, "sliding_window", None)
        if not getattr(config, "use_sliding_window", True):  # Qwen2 names a window it does not use
            window = None
        return cls(
            model_type=model_type,
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_layers=config.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rms_norm_eps=config.rms_norm_eps,
            rope=_rope_parameters(config),
            max_position_embeddings=config.max_position_embeddings,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
            qkv_bias=attention_bias or model_type == "qwen2",
            o_bias=attention_bias,
            mlp_bias=bool(getattr(config, "mlp_bias", False)),
            sliding_window=window,
        )


def rope_inv_freq(args: ModelArgs) -> torch.Tensor:
    """inv_freq[i] = theta^(-2i/d), i < d/2, float32, then the config's scaling (as transformers computes it).

    llama3: wavelengths 2 pi / inv_freq longer than original_max_position_embeddings / low_freq_factor are
    divided by `factor`, those shorter than .../high_freq_factor are kept, and the band between is interpolated
    with smooth = (original / wavelength - low) / (high - low). linear: every inv_freq / factor.
    """
    rope, d = args.rope, args.head_dim
    inv_freq = 1.0 / (rope["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.int64).to(torch.float) / d))
    kind = rope["rope_type"]
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return inv_freq / rope["factor"]
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]  # llama3
    original = rope["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < original / high) * ~(wavelen > original / low)
    return torch.where(medium, smoothed, scaled)


# ---------------------------------------------------------------------------------------------- layers


class FusedOp:
    """One of the step's fused ops (add_rms_norm, rotary_embedding, silu_and_mul, the *_quant ones): the kernel the
    registry chose for the device, run eagerly; its portable reference (ops.OPS) where no backend has one, and always
    under torch.compile (traced, so Inductor fuses it with its neighbours; a backend kernel would be a graph
    break)."""

    def __init__(self, op: str, kernel: KernelChoice | None) -> None:
        self.op = op
        self.reference: Callable[..., Any] = OPS[op].reference
        self.impl = self.reference if kernel is None else kernel.impl
        self.backend = "reference" if kernel is None else kernel.backend

    def __call__(self, *args: Any) -> Any:
        if torch.compiler.is_compiling():
            return self.reference(*args)
        return self.impl(*args)


# A linear's input: 16-bit, quantized by the kernel before it, or a norm left for the W4A16 linear to finish.
Activation = torch.Tensor | QuantizedActivation | NormedActivation


def _rows_of(x: Activation) -> torch.Tensor:
    """The tensor of an activation that carries its [B, T, ...] shape."""
    if isinstance(x, QuantizedActivation):
        return x.codes
    return x.x if isinstance(x, NormedActivation) else x


class RMSNorm(nn.Module):
    """w * x / sqrt(mean(x^2) + eps) over the last dimension, in float32, cast back before the weight: op rms_norm
    (norm_ops.rms_norm is the contract) on the kernel the registry chose for the device, else the reference;
    `add` is the residual add fused in front of it (op add_rms_norm).

    A backend's kernel is one launch where the reference chain is ~7, 65 times per Llama-3-8B forward. When the
    linear it feeds takes quantized activations (W8A8, dynamic per token), `quantize_output` makes the norm emit
    them directly (ops rms_norm_quant / add_rms_norm_quant): the linear's own quantization launch goes away."""

    op = NORM_OP

    def __init__(
        self,
        weight: torch.Tensor,
        eps: float,
        kernel: KernelChoice | None = None,
        add_kernel: KernelChoice | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", weight)
        self.impl: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] = (
            norm_ops.rms_norm if kernel is None else kernel.impl
        )
        self.backend = "reference" if kernel is None else kernel.backend
        self.add_op = FusedOp(ADD_NORM_OP, add_kernel)
        self.quant: str | None = None  # "int8" / "fp8": outputs are QuantizedActivation
        self.quant_ops: tuple[FusedOp, FusedOp] | None = None  # (rms_norm_quant, add_rms_norm_quant)

    def quantize_output(self, fmt: str, kernels: KernelSelector) -> None:
        """From now on emit activations quantized per token to `fmt` ("int8" / "fp8"), as the next linear takes."""
        self.quant = fmt
        self.quant_ops = (
            FusedOp(NORM_QUANT_OP, kernels.choose(NORM_QUANT_OP)),
            FusedOp(ADD_NORM_QUANT_OP, kernels.choose(ADD_NORM_QUANT_OP)),
        )

    def forward(self, x: torch.Tensor) -> Activation:
        if self.quant_ops is not None:
            codes, scale = self.quant_ops[0](x, self.weight, self.eps, self.quant == "fp8")
            return QuantizedActivation(codes, scale, x.dtype)
        if torch.compiler.is_compiling():
            # Traced, Inductor fuses the reference with its neighbours (the residual add); a backend kernel would be
            # a graph break at every norm.
            return norm_ops.rms_norm(x, self.weight, self.eps)
        return self.impl(x, self.weight, self.eps)

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> tuple[Activation, torch.Tensor]:
        """(norm(x + residual), x + residual): a residual add and this norm in one launch."""
        if self.quant_ops is not None:
            codes, scale, h = self.quant_ops[1](x, residual, self.weight, self.eps, self.quant == "fp8")
            return QuantizedActivation(codes, scale, x.dtype), h
        normed, h = self.add_op(x, residual, self.weight, self.eps)
        return normed, h

    def extra_repr(self) -> str:
        quant = "" if self.quant is None else f", quantized={self.quant}"
        return f"hidden={self.weight.shape[0]}, eps={self.eps}, op={self.op}, backend={self.backend}{quant}"


class Stacked(nn.Module):
    """Several linears reading the same input, outputs concatenated: the stand-in for a stacked layer when
    their formats cannot stack weights."""

    def __init__(self, parts: list[RuntimeLinear]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, x: Activation) -> torch.Tensor:
        return torch.cat([part(x) for part in self.parts], dim=-1)


def act_quant(linear: nn.Module) -> str | None:
    """The activation format ("int8" / "fp8") a linear (or a Stacked group, when every part agrees) takes already
    quantized per token (RuntimeLinear.act_quant); None: 16-bit activations only."""
    if isinstance(linear, Stacked):
        formats = {act_quant(part) for part in linear.parts}
        return formats.pop() if len(formats) == 1 else None
    return linear.act_quant if isinstance(linear, RuntimeLinear) else None


def _stack(parts: list[RuntimeLinear], fuse: bool) -> nn.Module:
    fused = fuse_linears(parts) if fuse else None
    return fused if fused is not None else Stacked(parts)


class Attention(nn.Module):
    """GQA self-attention over RoPE-rotated q and k; prefill attends over the fresh K/V, decode through the
    cache."""

    def __init__(
        self,
        args: ModelArgs,
        index: int,
        qkv_proj: nn.Module,
        o_proj: RuntimeLinear,
        rope_kernel: KernelChoice | None = None,
    ) -> None:
        super().__init__()
        self.index = index
        self.rope = FusedOp(ROPE_OP, rope_kernel)
        self.num_heads, self.num_kv_heads, self.head_dim = args.num_heads, args.num_kv_heads, args.head_dim
        self.sizes = [args.num_heads * args.head_dim, *[args.num_kv_heads * args.head_dim] * 2]
        self.sm_scale = args.head_dim**-0.5
        self.qkv_proj = qkv_proj
        self.o_proj = o_proj

    def forward(
        self,
        x: Activation,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StaticKVCache,
        positions: torch.Tensor | None,
        seq_lens: torch.Tensor | None,
        fold_rope: bool = False,
    ) -> torch.Tensor:
        """x [B, T, hidden] (or quantized: QuantizedActivation); cos/sin [B or 1, T, head_dim]. positions None: a
        prompt at 0 .. T - 1 (prefill); else positions [B, T] of the new tokens and seq_lens [B] the row lengths
        with them (decode)."""
        return self.o_proj(self.attend(x, cos, sin, cache, positions, seq_lens, fold_rope))

    def attend(
        self,
        x: Activation,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StaticKVCache,
        positions: torch.Tensor | None,
        seq_lens: torch.Tensor | None,
        fold_rope: bool = False,
    ) -> torch.Tensor:
        """`forward` up to o_proj's input: the heads' outputs [B, T, heads * head_dim]. `fold_rope` (decode, where
        can_fold_rope): the q/k/v linear rotates q and k and stores k and v into the cache itself."""
        b, t = _rows_of(x).shape[:2]
        if fold_rope and positions is not None:
            assert seq_lens is not None and isinstance(cache, StaticKVCache)
            q = _fold(self.qkv_proj).forward_rope_kv(
                x, cos, sin, positions, cache.layer_stores(self.index), cache.kv_format, self.num_heads
            )
            out = cache.attend(self.index, q.transpose(1, 2), seq_lens, self.sm_scale)
            return out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)
        q, k, v = self.qkv_proj(x).split(self.sizes, dim=-1)
        q = q.view(b, t, self.num_heads, self.head_dim)  # [B, T, H, D]
        k = k.view(b, t, self.num_kv_heads, self.head_dim)  # [B, T, Hkv, D]
        v = v.view(b, t, self.num_kv_heads, self.head_dim)
        if positions is None:
            q, k = self.rope(q, k, cos, sin)  # x * cos + rotate_half(x) * sin, one rotation for every head
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, D], [B, Hkv, T, D]
            cache.write_prompt(self.index, k, v)
            # Right padding: every real query sits before its row's padding, so the causal mask is also the
            # padding mask; padded queries' outputs are never read.
            out = nn.functional.scaled_dot_product_attention(
                q, k, v, is_causal=True, scale=self.sm_scale, enable_gqa=self.num_heads != self.num_kv_heads
            )
        else:
            assert seq_lens is not None
            # The same RoPE, then k and v stored at their positions: one op (rotary_kv_cache_write), one launch.
            q = cache.write_rotary(self.index, q, k, v, cos, sin, positions).transpose(1, 2)  # [B, H, T, D]
            out = cache.attend(self.index, q, seq_lens, self.sm_scale)
        return out.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim)

    def can_fold_rope(self, kv_format: str, rows: int | None = None) -> bool:
        """Whether a decode step of `rows` tokens into a StaticKVCache of `kv_format` can run RoPE and the cache
        write inside the q/k/v linear (attend's `fold_rope`): its backend runs w4a16_linear_rope_kv (for `rows`,
        with its own fused kernel for that format and these heads)."""
        qkv = self.qkv_proj
        if not isinstance(qkv, W4A16Linear):
            return False
        return qkv.can_fold("rope", rows, kv_format=kv_format, head_dim=self.head_dim, num_heads=self.num_heads)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate x) * up x)."""

    def __init__(
        self,
        gate_up_proj: nn.Module,
        down_proj: RuntimeLinear,
        intermediate_size: int,
        act_kernel: KernelChoice | None = None,
    ) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.down_proj = down_proj
        self.intermediate_size = intermediate_size
        self.act = FusedOp(ACT_OP, act_kernel)

    def forward(self, x: Activation) -> torch.Tensor:
        return self.down_proj(self.activation(x))

    def activation(self, x: Activation) -> torch.Tensor:
        """down_proj's input: silu(gate) * up of [gate | up] = gate_up_proj(x)."""
        return self.act(self.gate_up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then + mlp(norm(.)). The residual stream is passed along
    unsummed (vLLM's layout): a layer takes (its input's last branch output, the residual before it) and returns
    (its MLP's output, the residual after attention), so every residual add runs inside the norm that follows it."""

    def __init__(
        self, input_layernorm: RMSNorm, self_attn: Attention, post_attention_layernorm: RMSNorm, mlp: MLP
    ) -> None:
        super().__init__()
        self.input_layernorm = input_layernorm
        self.self_attn = self_attn
        self.post_attention_layernorm = post_attention_layernorm
        self.mlp = mlp

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: StaticKVCache,
        positions: torch.Tensor | None,
        seq_lens: torch.Tensor | None,
        residual: torch.Tensor | None = None,
        fold: bool = False,
        next_norm: RMSNorm | None = None,
        fold_silu: bool = False,
        fold_rope: bool = False,
    ) -> tuple[Activation, torch.Tensor]:
        """(mlp out, h) with h = stream + attention(norm(stream)) and the stream x (residual None, the first layer)
        or x + residual; the layer's output is mlp out + h.

        `fold` (the model checked can_fold): the norms run inside the W4A16 linears around them (norm_fold_ops).
        o_proj adds the residual and applies the post-attention norm's weight, gate/up applies its scale; with
        `next_norm`, down_proj adds h and applies that norm's weight too, and the layer returns (the NormedActivation
        for the next layer or lm_head, its stream). x may be such a NormedActivation, from the layer before. With
        `fold_silu` too (can_fold_silu), gate/up returns SwiGLU's silu(gate) * up itself. `fold_rope` (decode,
        Attention.can_fold_rope): q/k/v rotates q and k and writes the cache in its epilogue."""
        if isinstance(x, NormedActivation):
            normed: Activation = x
            assert residual is not None
        elif residual is None:
            normed, residual = self.input_layernorm(x), x
        else:
            assert isinstance(x, torch.Tensor)
            normed, residual = self.input_layernorm.add(x, residual)
        if not fold:
            attn = self.self_attn(normed, cos, sin, cache, positions, seq_lens, fold_rope)
            normed, residual = self.post_attention_layernorm.add(attn, residual)
            return self.mlp(normed), residual
        attn = self.self_attn.attend(normed, cos, sin, cache, positions, seq_lens, fold_rope)
        post = self.post_attention_layernorm
        normed, residual = _fold(self.self_attn.o_proj).forward_residual(attn, residual, post.weight, post.eps)
        gate_up = self.mlp.gate_up_proj
        act = _fold(gate_up).forward_silu_mul(normed) if fold_silu else self.mlp.activation(normed)
        if next_norm is None:
            return self.mlp.down_proj(act), residual
        return _fold(self.mlp.down_proj).forward_residual(act, residual, next_norm.weight, next_norm.eps)

    def can_fold(self, rows: int | None = None) -> bool:
        """Whether its norms can run inside its W4A16 linears (forward's `fold`): o_proj and down_proj finish a
        residual add, q/k/v and gate/up take the NormedActivation (their backends run norm_fold_ops' ops; for `rows`
        activation rows, with their own fused kernels), and no norm quantizes its output."""
        attn, mlp = self.self_attn, self.mlp
        producers = (attn.o_proj, mlp.down_proj)
        consumers = (attn.qkv_proj, mlp.gate_up_proj)
        norms = (self.input_layernorm, self.post_attention_layernorm)
        return (
            all(isinstance(p, W4A16Linear) and p.can_fold("residual", rows) for p in producers)
            and all(isinstance(c, W4A16Linear) and c.can_fold("rms", rows) for c in consumers)
            and all(norm.quant is None for norm in norms)
        )


    def can_fold_silu(self, rows: int | None = None) -> bool:
        """Whether its gate/up can return SwiGLU's output itself (w4a16_linear_silu_mul; for `rows` activation rows
        with its backend's own fused kernel): with can_fold, forward's `fold_silu`."""
        gate_up = self.mlp.gate_up_proj
        return isinstance(gate_up, W4A16Linear) and gate_up.can_fold("silu", rows)


def _fold(linear: nn.Module) -> W4A16Linear:
    assert isinstance(linear, W4A16Linear)
    return linear


# ---------------------------------------------------------------------------------------------- model


class DecoderModel(nn.Module):
    """The runtime decoder: layers built by the from_* constructors; K/V live in caches from `new_cache`."""

    def __init__(
        self,
        args: ModelArgs,
        embed_weight: torch.Tensor,
        layers: list[DecoderLayer],
        norm: RMSNorm,
        lm_head: RuntimeLinear,
        kernels: KernelSelector,
        kv_format: str = "none",
    ) -> None:
        super().__init__()
        check_kv_format(kv_format)
        self.args = args
        self.register_buffer("embed_weight", embed_weight)
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.lm_head = lm_head
        self.kernels = kernels
        self.kv_format = kv_format
        self.tokenizer: PreTrainedTokenizerBase | None = None
        self._rope: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        # Decode steps with the norms folded into the W4A16 linears (norm_fold_ops): None decides by
        # `folds_norms` (where a backend kernel runs the folding ops, unless ACCEL_FOLD_NORMS=0; SwiGLU's too unless
        # ACCEL_FOLD_SILU=0); True / False force.
        self.fold_norms: bool | None = None
        self._folds_at: dict[int, tuple[bool, bool]] = {}  # _folds' answers per row count (the weights never change)
        # Decode steps with RoPE and the KV cache write inside the q/k/v linears (qkv_fold_ops): None decides by
        # `folds_rope` (a backend kernel runs it for the step's rows and cache, unless ACCEL_FOLD_ROPE=0); True /
        # False force.
        self.fold_rope: bool | None = None
        self._rope_folds_at: dict[tuple[int, str], bool] = {}

    def folds_norms(self, rows: int = 1) -> bool:
        """Whether a decode step of `rows` tokens runs its norms inside the W4A16 linears: every layer can_fold, and
        (unless fold_norms forces it) a backend kernel, not the reference, runs the folding ops with its own fused
        kernels for that many rows (the ops' `accepts`)."""
        return self._folds(rows)[0]

    def folds_silu(self, rows: int = 1) -> bool:
        """Whether such a step (folds_norms) also runs SwiGLU inside the gate/up linears (can_fold_silu)."""
        return all(self._folds(rows))

    def _folds(self, rows: int) -> tuple[bool, bool]:
        if self.fold_norms is not None:
            norms = self.fold_norms and bool(self.layers) and all(layer.can_fold() for layer in self.layers)
            return norms, norms and all(layer.can_fold_silu() for layer in self.layers)
        if rows not in self._folds_at:
            linear = self.layers[0].self_attn.o_proj if self.layers else None
            norms = (
                isinstance(linear, W4A16Linear)
                and linear.backend != "reference"
                and os.environ.get("ACCEL_FOLD_NORMS", "1") != "0"
                and all(layer.can_fold(rows) for layer in self.layers)
            )
            silu = os.environ.get("ACCEL_FOLD_SILU", "1") != "0"
            silu = silu and all(layer.can_fold_silu(rows) for layer in self.layers)
            self._folds_at[rows] = (norms, norms and silu)
        return self._folds_at[rows]

    def folds_rope(self, rows: int, cache: object) -> bool:
        """Whether a decode step of `rows` tokens into `cache` runs RoPE and the KV cache write inside the q/k/v
        W4A16 linears: every layer's Attention.can_fold_rope, and (unless fold_rope forces it) a backend kernel, not
        the reference, runs the op with its own fused kernel for that many rows and the cache's format."""
        return isinstance(cache, StaticKVCache) and self._folds_rope(rows, cache.kv_format)

    def _folds_rope(self, rows: int, kv_format: str) -> bool:
        attns = [layer.self_attn for layer in self.layers]
        if self.fold_rope is not None:
            return self.fold_rope and bool(attns) and all(attn.can_fold_rope(kv_format) for attn in attns)
        key = (rows, kv_format)
        if key not in self._rope_folds_at:
            qkv = attns[0].qkv_proj if attns else None
            self._rope_folds_at[key] = (
                isinstance(qkv, W4A16Linear)
                and qkv.backend != "reference"
                and os.environ.get("ACCEL_FOLD_ROPE", "1") != "0"
                and all(attn.can_fold_rope(kv_format, rows) for attn in attns)
            )
        return self._rope_folds_at[key]

    @property
    def dtype(self) -> torch.dtype:
        return self.embed_weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embed_weight.device

    def new_cache(self, max_batch: int, max_seq: int, kv_format: str | None = None) -> StaticKVCache:
        """A static KV cache for up to `max_batch` rows of `max_seq` positions, in `kv_format` (default: the
        model's), with the RoPE tables for its positions made ready."""
        args = self.args
        kv_format = self.kv_format if kv_format is None else kv_format
        if max_seq > args.max_position_embeddings:
            raise ValueError(
                f"max_seq {max_seq} exceeds the model's max_position_embeddings {args.max_position_embeddings}"
            )
        if args.sliding_window is not None and max_seq > args.sliding_window:
            raise ValueError(
                f"max_seq {max_seq} exceeds the model's sliding_window {args.sliding_window}, which the runtime "
                "does not implement; use max_seq <= sliding_window"
            )
        cache = StaticKVCache(
            args.num_layers,
            max_batch,
            args.num_kv_heads,
            max_seq,
            args.head_dim,
            kv_format=kv_format,
            dtype=self.dtype,
            device=self.device,
            kernels=self.kernels,
        )
        self._rope_tables(max_seq)
        return cache

    def _rope_tables(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of pos * inv_freq for pos < length, [length, head_dim] (each frequency twice: both halves
        of head_dim) in the model dtype, as transformers casts them; pos and inv_freq multiply in float32.
        Kept per length for the model's lifetime: a captured CUDA graph reads them by address."""
        if length not in self._rope:
            positions = torch.arange(length, device=self.device, dtype=torch.float32)
            freqs = torch.outer(positions, rope_inv_freq(self.args).to(self.device))  # [S, D/2]
            angles = torch.cat((freqs, freqs), dim=-1)  # [S, D]
            self._rope[length] = (angles.cos().to(self.dtype), angles.sin().to(self.dtype))
        return self._rope[length]

    def prefill(
        self, tokens: torch.Tensor, lengths: torch.Tensor, cache: StaticKVCache, *, all_logits: bool = False
    ) -> torch.Tensor:
        """Run right-padded prompts tokens [B, T] (row b's lengths[b] tokens first) into rows 0 .. B - 1 of
        `cache`, replacing what they held. Returns each row's logits after its last prompt token [B, vocab], or
        with `all_logits` every position's [B, T, vocab]."""
        return self.prefill_hidden(tokens, lengths, cache, all_logits=all_logits)[0]

    def prefill_hidden(
        self, tokens: torch.Tensor, lengths: torch.Tensor, cache: StaticKVCache, *, all_logits: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`prefill`, plus the final-normed hidden states the logits come from (lm_head's input, [B, hidden] or
        [B, T, hidden]): what draft heads (speculative.medusa) read."""
        b, t = tokens.shape
        rows = cache.rows(b)
        if t > cache.max_seq:
            raise ValueError(f"prompt length {t} exceeds the cache's max_seq {cache.max_seq}")
        cos, sin = self._rope_tables(cache.max_seq)
        cos, sin = cos[None, :t], sin[None, :t]  # [1, T, D]
        x = nn.functional.embedding(tokens, self.embed_weight)  # [B, T, hidden]
        residual = None
        for layer in self.layers:
            x, residual = layer(x, cos, sin, rows, None, None, residual)
        rows.seq_lens.copy_(lengths)
        if not all_logits:
            last = (torch.arange(b, device=x.device), lengths.to(torch.int64) - 1)
            x, residual = x[last], None if residual is None else residual[last]  # [B, hidden]
        hidden = self._final_norm(x, residual)
        return self.lm_head(hidden), hidden

    def decode(self, tokens: torch.Tensor, cache: StaticKVCache) -> torch.Tensor:
        """Run tokens [B, T] that follow what rows 0 .. B - 1 of `cache` hold (T = 1: decode; T > 1: speculative
        verification or a chunk after context), store their K/V and advance the rows. Returns logits
        [B, T, vocab]. The caller keeps every row's length + T <= max_seq (a device-side check would sync)."""
        return self._decode(tokens, cache, want_hidden=False)[0]

    def decode_hidden(self, tokens: torch.Tensor, cache: StaticKVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode`, plus the final-normed hidden states [B, T, hidden] the logits come from."""
        logits, hidden = self._decode(tokens, cache, want_hidden=True)
        assert hidden is not None
        return logits, hidden

    def _decode(
        self, tokens: torch.Tensor, cache: StaticKVCache, want_hidden: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """decode's step; the final-normed hidden states too when `want_hidden` (else None where the final norm was
        folded into lm_head). The norms fold into the W4A16 linears where folds_norms(B * T) (batch 1 and 2 on the
        tuned Hopper shapes), RoPE and the cache write into q/k/v where folds_rope."""
        b, t = tokens.shape
        rows = cache.rows(b)
        cos, sin = self._rope_tables(cache.max_seq)
        start = rows.seq_lens.to(torch.int64)  # [B]
        positions = start[:, None] + torch.arange(t, device=tokens.device)  # [B, T]
        seq_lens = start + t
        cos, sin = cos[positions], sin[positions]  # [B, T, D]
        x: Activation = nn.functional.embedding(tokens, self.embed_weight)
        residual = None
        compiling = torch.compiler.is_compiling()
        fold, fold_silu = (False, False) if compiling else self._folds(b * t)
        fold_rope = not compiling and self.folds_rope(b * t, rows)
        head = self.lm_head
        head_folds = fold and not want_hidden and isinstance(head, W4A16Linear) and head.can_fold("rms", b * t)
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            next_norm = (self.norm if head_folds else None) if last else self.layers[i + 1].input_layernorm
            x, residual = layer(
                x, cos, sin, rows, positions, seq_lens, residual, fold, next_norm if fold else None, fold_silu,
                fold_rope,
            )
        rows.seq_lens.copy_(seq_lens)
        if isinstance(x, NormedActivation):  # the final norm folded: lm_head applies it
            return self.lm_head(x), None
        assert isinstance(x, torch.Tensor)
        hidden = self._final_norm(x, residual)
        return self.lm_head(hidden), hidden

    def _final_norm(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The final norm of the residual stream x + residual (x alone when no layer ran)."""
        return self.norm(x) if residual is None else self.norm.add(x, residual)[0]

    def kernel_meta(self) -> dict[str, str]:
        """Which backend runs each op: {op: backend} over every linear, norm and fused op, the cached attention and
        the KV cache writes (prefill's, and decode's fused with RoPE; several backends for one op are joined with
        commas)."""
        seen: dict[str, set[str]] = {}
        for module in self.modules():
            ops: list[RuntimeLinear | RMSNorm | FusedOp] = []
            if isinstance(module, (RuntimeLinear, RMSNorm)):
                ops.append(module)
            if isinstance(module, RMSNorm):
                ops.extend(module.quant_ops or (module.add_op,))
            elif isinstance(module, Attention):
                ops.append(module.rope)
            elif isinstance(module, MLP):
                ops.append(module.act)
            if isinstance(module, RMSNorm) and module.quant:
                choice = self.kernels.choose(SCALED_MM_OP)  # the linear after it multiplies the codes
                seen.setdefault(SCALED_MM_OP, set()).add("reference" if choice is None else choice.backend)
            for op in ops:
                seen.setdefault(op.op, set()).add(op.backend)
        for op in (ATTENTION_OP, WRITE_OP, ROTARY_WRITE_OP):
            choice = self.kernels.choose(op)
            seen[op] = {"reference" if choice is None else choice.backend}
        if self.folds_norms():  # batch-1 decode steps (at least) run the norms inside the W4A16 linears
            folds = _fold(self.layers[0].self_attn.o_proj).folds
            for op, choice in zip(FOLD_OPS[: 3 if self.folds_silu() else 2], folds, strict=False):
                seen[op] = {"reference" if choice is None else choice.backend}
        if self._folds_rope(1, self.kv_format):  # batch-1 decode steps into the model's own cache format
            choice = _fold(self.layers[0].self_attn.qkv_proj).folds[FOLD_OPS.index(ROPE_KV_OP)]
            seen[ROPE_KV_OP] = {"reference" if choice is None else choice.backend}
        return {op: ",".join(sorted(backends)) for op, backends in sorted(seen.items())}


# ---------------------------------------------------------------------------------------------- building

LinearFactory = Callable[[str, int, int, bool], RuntimeLinear]


def _assemble(
    args: ModelArgs,
    kernels: KernelSelector,
    kv_format: str,
    fuse: bool,
    *,
    linear: LinearFactory,
    tensor: Callable[[str], torch.Tensor],
    lm_head: RuntimeLinear | None,
) -> DecoderModel:
    """Build the model from `linear(name, out, in, bias)` and `tensor(name)` with transformers' names
    (model.layers.3.self_attn.q_proj); a None `lm_head` ties it to the embedding."""
    hidden, kv_width = args.hidden_size, args.num_kv_heads * args.head_dim
    norm_kernel, add_norm_kernel = kernels.choose(NORM_OP), kernels.choose(ADD_NORM_OP)
    rope_kernel, act_kernel = kernels.choose(ROPE_OP), kernels.choose(ACT_OP)

    def rms_norm(name: str) -> RMSNorm:
        return RMSNorm(tensor(name), args.rms_norm_eps, norm_kernel, add_norm_kernel)

    layers = []
    for i in range(args.num_layers):
        prefix = f"model.layers.{i}"
        qkv = [
            linear(f"{prefix}.self_attn.q_proj", args.num_heads * args.head_dim, hidden, args.qkv_bias),
            linear(f"{prefix}.self_attn.k_proj", kv_width, hidden, args.qkv_bias),
            linear(f"{prefix}.self_attn.v_proj", kv_width, hidden, args.qkv_bias),
        ]
        o_proj = linear(f"{prefix}.self_attn.o_proj", hidden, args.num_heads * args.head_dim, args.o_bias)
        gate_up = [
            linear(f"{prefix}.mlp.gate_proj", args.intermediate_size, hidden, args.mlp_bias),
            linear(f"{prefix}.mlp.up_proj", args.intermediate_size, hidden, args.mlp_bias),
        ]
        down = linear(f"{prefix}.mlp.down_proj", hidden, args.intermediate_size, args.mlp_bias)
        layer = DecoderLayer(
            rms_norm(f"{prefix}.input_layernorm.weight"),
            Attention(args, i, _stack(qkv, fuse), o_proj, rope_kernel),
            rms_norm(f"{prefix}.post_attention_layernorm.weight"),
            MLP(_stack(gate_up, fuse), down, args.intermediate_size, act_kernel),
        )
        _fuse_activation_quant(layer, kernels)
        layers.append(layer)
    embed = tensor("model.embed_tokens.weight")
    head = lm_head if lm_head is not None else DenseLinear(embed)
    norm = rms_norm("model.norm.weight")
    return DecoderModel(args, embed, layers, norm, head, kernels, kv_format).eval()


def _fuse_activation_quant(layer: DecoderLayer, kernels: KernelSelector) -> None:
    """Where a W8A8 linear quantizes its input per token itself, have the norm before it emit the codes instead
    (vLLM's norm + quant fusion): the norms before qkv_proj and gate_up_proj. o_proj's input comes from attention
    and down_proj's from SwiGLU: they quantize their own (op silu_and_mul_quant exists, but its one-program-per-row
    kernel measured slower than silu_and_mul + the linear's quantize_rows at every row count on the H200,
    accel-cuda/KERNEL_NOTES.md)."""
    for norm, linear in (
        (layer.input_layernorm, layer.self_attn.qkv_proj),
        (layer.post_attention_layernorm, layer.mlp.gate_up_proj),
    ):
        fmt = act_quant(linear)
        if fmt is not None:
            norm.quantize_output(fmt, kernels)


def from_hf(
    model: PreTrainedModel,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    kv_format: str = "none",
    registry: PluginRegistry | None = None,
    fuse: bool = True,
) -> DecoderModel:
    """The runtime model of a loaded transformers causal LM, nn.Linear and QuantLinear layers alike (an
    artifact from load_artifact included). Tensors already in `dtype` on `device` are shared, not copied."""
    first = next(model.parameters())
    dtype = dtype or first.dtype
    device = torch.device(device) if device is not None else first.device
    kernels = KernelSelector(device, registry)
    args = ModelArgs.from_config(model.config)
    state = model.state_dict()

    def tensor(name: str) -> torch.Tensor:
        return state[name].detach().to(device, dtype)

    def linear(name: str, out_features: int, in_features: int, bias: bool) -> RuntimeLinear:
        return runtime_linear(model.get_submodule(name), kernels, dtype)

    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = isinstance(head, nn.Linear) and head.weight.data_ptr() == embed.data_ptr()
    lm_head = None if tied else runtime_linear(head, kernels, dtype)
    return _assemble(args, kernels, kv_format, fuse, linear=linear, tensor=tensor, lm_head=lm_head)


def from_state_dict(
    config: PretrainedConfig,
    state_dict: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    kv_format: str = "none",
    registry: PluginRegistry | None = None,
    fuse: bool = True,
) -> DecoderModel:
    """The runtime model from a transformers config and a dense state dict with transformers' names
    (model.layers.0.self_attn.q_proj.weight, ...); lm_head.weight absent means tied to the embedding."""
    device = torch.device(device)
    kernels = KernelSelector(device, registry)
    args = ModelArgs.from_config(config)

    def tensor(name: str) -> torch.Tensor:
        if name not in state_dict:
            raise KeyError(f"state dict has no {name}; expected transformers' Llama-family names")
        return state_dict[name].detach().to(device, dtype)

    def linear(name: str, out_features: int, in_features: int, bias: bool) -> RuntimeLinear:
        weight = tensor(f"{name}.weight")
        if tuple(weight.shape) != (out_features, in_features):
            raise ValueError(
                f"{name}.weight has shape {tuple(weight.shape)}, the config implies {(out_features, in_features)}"
            )
        return DenseLinear(weight, tensor(f"{name}.bias") if f"{name}.bias" in state_dict else None)

    head = None if "lm_head.weight" not in state_dict else DenseLinear(tensor("lm_head.weight"))
    return _assemble(args, kernels, kv_format, fuse, linear=linear, tensor=tensor, lm_head=head)


def from_artifact(
    path: str | os.PathLike[str],
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device = "cpu",
    kv_format: str = "none",
    registry: PluginRegistry | None = None,
    fuse: bool = True,
) -> DecoderModel:
    """The runtime model of an accel artifact (verified and loaded by artifact.load_artifact), computing in
    `dtype` (default: the artifact's), with the artifact's tokenizer as `.tokenizer`."""
    hf_model, tokenizer, _ = load_artifact(path, device=device)
    model = from_hf(hf_model, dtype=dtype, device=device, kv_format=kv_format, registry=registry, fuse=fuse)
    model.tokenizer = tokenizer
    return model


def _random_quant_linear(
    quant: str,
    out_features: int,
    in_features: int,
    group_size: int,
    dtype: torch.dtype,
    device: torch.device,
    gen: torch.Generator,
    std: float,
) -> QuantLinear:
    """A QuantLinear with random codes made on `device` (never a float weight): W = (q - zp) * s with
    std(W) about `std`. Codes uniform on the grid have std 4.6 (int4) / 73 (int8); fp8 codes are N(0, 64^2)."""
    n, k = out_features, in_features
    act = None
    if quant.startswith("w4a16"):
        args = WeightQuantArgs(num_bits=4, symmetric=quant != "w4a16-asym", strategy="group", group_size=group_size)
        q = torch.randint(-8, 8, (n, k), generator=gen, device=device, dtype=torch.int8)
        if quant == "w4a16-2:4":  # 2 of every 4 inputs kept at random; the module keeps its mask (as loaded)
            keep = torch.rand(n, k // 4, 4, generator=gen, device=device).argsort(dim=2)[..., :2]
            mask = torch.zeros(n, k // 4, 4, dtype=torch.bool, device=device).scatter_(2, keep, True).reshape(n, k)
            module = QuantLinear(
                QuantizedWeight(
                    q.masked_fill(~mask, 0),
                    torch.full((n, args.num_groups(k)), std / 4.6 * 2**0.5, dtype=dtype, device=device),
                    None,
                    args,
                )
            )
            module.accel_sparse_mask, module.accel_sparse_pattern = mask, "2:4"
            return module
        scale = torch.full((n, args.num_groups(k)), std / 4.6, dtype=dtype, device=device)
        zero = (
            None
            if args.symmetric
            else torch.randint(-1, 2, scale.shape, generator=gen, device=device, dtype=torch.int8)
        )
        return QuantLinear(QuantizedWeight(q, scale, zero, args))
    if quant == "w8a8-fp8":
        args = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel", type="float")
        codes = torch.randn(n, k, generator=gen, device=device, dtype=dtype).mul_(64).clamp_(-448, 448)
        scale = torch.full((n, 1), std / 64, dtype=dtype, device=device)
        act = ActivationQuantArgs(type="float")
        return QuantLinear(QuantizedWeight(codes.to(FP8_DTYPE), scale, None, args), act_args=act)
    args = WeightQuantArgs(num_bits=8, symmetric=True, strategy="channel")
    q = torch.randint(-127, 128, (n, k), generator=gen, device=device, dtype=torch.int8)
    scale = torch.full((n, 1), std / 73, dtype=dtype, device=device)
    if quant == "w8a8-int8":
        act = ActivationQuantArgs()
    return QuantLinear(QuantizedWeight(q, scale, None, args), act_args=act)


def random_model(
    config: PretrainedConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    quant: str = "none",
    group_size: int = 128,
    seed: int = 0,
    kv_format: str = "none",
    registry: PluginRegistry | None = None,
    fuse: bool = True,
    quantize_lm_head: bool = False,
) -> DecoderModel:
    """A runtime model with random weights at `config`'s real shapes, for speed and memory measurements
    (Llama-3-8B shapes fit one GPU). Every tensor is made on `device` in its final dtype, one layer at a time, so
    no float32 copy of the model ever exists. `quant` (RANDOM_QUANT) quantizes every decoder linear, and lm_head
    too with `quantize_lm_head` (an untied head of its own, as a profile that does not ignore lm_head quantizes it;
    vLLM's GPTQ `lm_head_quantized`); the embedding stays in `dtype`. Weights are N(0, 0.02^2)-sized; norms are
    ones."""
    if quant not in RANDOM_QUANT:
        raise ValueError(f"quant must be one of {RANDOM_QUANT}, got {quant!r}")
    if quantize_lm_head and quant == "none":
        raise ValueError("quantize_lm_head needs a weight format: quant is 'none'")
    device = torch.device(device)
    kernels = KernelSelector(device, registry)
    args = ModelArgs.from_config(config)
    gen = torch.Generator(device=device).manual_seed(seed)
    std = 0.02

    def dense(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype).mul_(std)

    def tensor(name: str) -> torch.Tensor:
        if name.endswith("norm.weight"):
            return torch.ones(args.hidden_size, dtype=dtype, device=device)
        return dense(args.vocab_size, args.hidden_size)  # model.embed_tokens.weight

    def linear(name: str, out_features: int, in_features: int, bias: bool) -> RuntimeLinear:
        b = torch.zeros(out_features, dtype=dtype, device=device) if bias else None
        if quant == "none":
            return DenseLinear(dense(out_features, in_features), b)
        module = _random_quant_linear(quant, out_features, in_features, group_size, dtype, device, gen, std)
        module.bias = b
        return runtime_linear(module, kernels, dtype)

    if quantize_lm_head:
        head: RuntimeLinear | None = linear("lm_head", args.vocab_size, args.hidden_size, False)
    else:
        head = None if args.tie_word_embeddings else DenseLinear(dense(args.vocab_size, args.hidden_size))
    return _assemble(args, kernels, kv_format, fuse, linear=linear, tensor=tensor, lm_head=head)
