"""A roofline cost model: a profile's decode tokens/s, TTFT and memory on a chip, before anyone runs it.

Each kernel of a step takes max(bytes it moves / memory bandwidth, operations / peak throughput), and a step is
the sum of its kernels (Williams et al.'s roofline, per kernel). The kernels of a Llama-style decoder step:

    linears     bytes = stored weights (codes + scales, by format); ops = 2 * tokens * params, at the peak of the
                format's matmul dtype (16-bit for weight-only formats, which dequantize to 16-bit; int8 / fp8 for
                W8A8)
    lm_head     16-bit weights (left out of quantization by default); 2 * rows * vocab * hidden
    attention   decode: every cached token of every row read once, bytes = B * C * layers * 2 * kv_heads *
                kv_token_bytes(format) (accel.runtime.kv_ops); ops = 4 * B * C * q_heads * head_dim * layers
                prefill (batch 1, T tokens, causal): ops = 2 * T^2 * q_heads * head_dim * layers (half of 4 T^2)

decode_tokens_per_s = B / step; ttft_ms = the prefill of `prompt_len` tokens (the first token's logits come out of
it). Memory: weights (embedding, linears, lm_head) + the static KV cache (max_batch * max_seq tokens) + live
activations, estimated as T * (3 * intermediate + 4 * hidden) * dtype bytes in prefill (gate|up output, its
activated half and a few hidden-sized buffers) and B rows of the same in decode.

No efficiency factor is fitted: the roofline is the physical lower bound on time, so a measured step is slower
than predicted and the error against measurements (bench/roofline_check.py) says how far each kernel is from it.
A figure the chip family does not publish (accel.planning.chips) makes the prediction say what it lacks instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from accel.planning.planner import KV_KIND, Plan
from accel.runtime.kv_ops import kv_token_bytes
from accel.schema import CapabilityDescriptor

__all__ = [
    "FORMAT_COMPUTE", "ModelShape", "Prediction", "Workload", "predict", "predict_plan", "weight_bytes_per_param",
]

GB = 1e9
# The dtype whose peak a format's matmul runs at (16-bit: the activation dtype, "bf16" or "fp16").
FORMAT_COMPUTE = {
    "16-bit": "16", "w4a16": "16", "w4a16-asym": "16", "w8a16": "16", "w8a16-fp8": "16",
    "w8a8-int8": "int8", "w4a8-int8": "int8", "w8a8-fp8": "fp8",
}


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-style decoder that set its bytes and operations."""

    name: str
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool = False

    @classmethod
    def llama3_8b(cls, num_layers: int = 32) -> ModelShape:
        """Llama-3-8B (bench/decode.py's model)."""
        return cls("llama3-8b", num_layers, 4096, 14336, 32, 8, 128, 128256)

    @classmethod
    def from_hf_config(cls, config: Any, name: str = "model") -> ModelShape:
        """From a transformers config of a Llama-family model."""
        heads = config.num_attention_heads
        return cls(
            name, config.num_hidden_layers, config.hidden_size, config.intermediate_size, heads,
            getattr(config, "num_key_value_heads", None) or heads,
            getattr(config, "head_dim", None) or config.hidden_size // heads, config.vocab_size,
            bool(getattr(config, "tie_word_embeddings", False)),
        )

    @property
    def linear_params(self) -> int:
        """Parameters of the decoder layers' linears (q|k|v, o, gate|up, down), all layers."""
        h, d = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * d
        per_layer = qkv + self.num_heads * d * h + 3 * h * self.intermediate_size
        return self.num_layers * per_layer

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size


def weight_bytes_per_param(fmt: str, group_size: int = 128, in_features: int = 4096, dtype_bytes: int = 2) -> float:
    """Stored bytes per weight of a linear in `fmt`: codes plus scales (and zero points), compressed-tensors'
    layout (group scales in the model dtype, int8 zero points; per-channel float32 scales for 8-bit formats)."""
    if fmt == "16-bit":
        return float(dtype_bytes)
    if fmt in ("w4a16", "w4a16-asym", "w4a8-int8"):
        return 0.5 + dtype_bytes / group_size + (1 / group_size if fmt == "w4a16-asym" else 0.0)
    if fmt in ("w8a16", "w8a16-fp8", "w8a8-int8", "w8a8-fp8"):
        return 1.0 + 4 / in_features
    raise ValueError(f"no byte count for weight format {fmt!r}; known: {', '.join(FORMAT_COMPUTE)}")


@dataclass(frozen=True)
class Workload:
    """What is asked of the chip: decode at `batch` rows holding `context` cached tokens each (on average over the
    generation), TTFT at one prompt of `prompt_len`, a static cache of `max_seq` positions for `max_batch` rows."""

    batch: int = 1
    context: int = 192
    prompt_len: int = 2048
    max_seq: int = 2176
    max_batch: int = 1


@dataclass
class Prediction:
    """Predicted speed and memory of one (weights, KV) format pair on one chip; None where a figure is missing."""

    chip: str
    weight_format: str
    kv_format: str
    batch: int
    decode_step_ms: float | None
    decode_tokens_per_s: float | None
    decode_bound: str | None
    ttft_ms: float | None
    weights_gb: float
    kv_cache_gb: float
    prefill_peak_gb: float
    decode_peak_gb: float
    fits: bool | None
    missing: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _peak(capability: CapabilityDescriptor, compute: str, dtype: torch.dtype) -> tuple[float | None, str]:
    """(peak ops/s, key) for a matmul dtype class; 16-bit is the activation dtype's figure (bf16 or fp16)."""
    sixteen = ("bf16", "fp16") if dtype == torch.bfloat16 else ("fp16", "bf16")
    keys = sixteen if compute == "16" else (compute,)
    for key in keys:
        if key in capability.peak_tflops:
            return capability.peak_tflops[key] * 1e12, key
    return None, keys[0]


def _kernel_time(nbytes: float, ops: float, bandwidth: float, peak: float) -> tuple[float, str]:
    memory_s, compute_s = nbytes / bandwidth, ops / peak
    return max(memory_s, compute_s), "memory" if memory_s >= compute_s else "compute"


def predict(
    shape: ModelShape,
    capability: CapabilityDescriptor,
    weight_format: str = "16-bit",
    kv_format: str = "none",
    workload: Workload | None = None,
    *,
    group_size: int = 128,
    dtype: torch.dtype = torch.bfloat16,
    bandwidth_gbps: float | None = None,
) -> Prediction:
    """The roofline prediction (module docstring). `kv_format` is the runtime's ("none", "int8", "fp8", "int4");
    `bandwidth_gbps` replaces the datasheet bandwidth (e.g. a measured copy bandwidth)."""
    w = workload or Workload()
    if weight_format not in FORMAT_COMPUTE:
        raise ValueError(f"unknown weight format {weight_format!r}; known: {', '.join(FORMAT_COMPUTE)}")
    dtype_bytes = dtype.itemsize
    linear_bytes = shape.linear_params * weight_bytes_per_param(weight_format, group_size, shape.hidden_size,
                                                                dtype_bytes)
    embed_bytes = shape.embedding_params * dtype_bytes
    head_bytes = 0.0 if shape.tied_embeddings else embed_bytes
    weights = linear_bytes + embed_bytes + head_bytes
    token_bytes = shape.num_layers * 2 * shape.num_kv_heads * kv_token_bytes(kv_format, shape.head_dim, dtype)
    kv_cache = w.max_batch * w.max_seq * token_bytes
    act_row = (3 * shape.intermediate_size + 4 * shape.hidden_size) * dtype_bytes
    prefill_peak = weights + kv_cache + w.prompt_len * act_row
    decode_peak = weights + kv_cache + w.max_batch * act_row

    missing: list[str] = []
    bandwidth = (bandwidth_gbps or capability.memory_bandwidth_gbps or 0) * 1e9
    if not bandwidth:
        missing.append("memory bandwidth")
    peak_linear, linear_key = _peak(capability, FORMAT_COMPUTE[weight_format], dtype)
    peak_16, key_16 = _peak(capability, "16", dtype)
    missing += [f"peak {key}" for key, peak in ((linear_key, peak_linear), (key_16, peak_16)) if peak is None]
    capacity = capability.total_memory_bytes
    fits = None if not capacity else max(prefill_peak, decode_peak) <= capacity
    prediction = Prediction(
        capability.device_name, weight_format, kv_format, w.batch, None, None, None, None,
        weights / GB, kv_cache / GB, prefill_peak / GB, decode_peak / GB, fits, sorted(set(missing)),
    )
    if missing:
        return prediction
    assert peak_linear is not None and peak_16 is not None
    hd = shape.num_heads * shape.head_dim
    decode = [
        _kernel_time(linear_bytes, 2 * w.batch * shape.linear_params, bandwidth, peak_linear),
        _kernel_time(head_bytes or embed_bytes, 2 * w.batch * shape.embedding_params, bandwidth, peak_16),
        _kernel_time(w.batch * w.context * token_bytes, 4 * w.batch * w.context * hd * shape.num_layers, bandwidth,
                     peak_16),
    ]
    step = sum(seconds for seconds, _ in decode)
    t = w.prompt_len
    prefill = [
        _kernel_time(linear_bytes, 2 * t * shape.linear_params, bandwidth, peak_linear),
        _kernel_time(head_bytes or embed_bytes, 2 * shape.embedding_params, bandwidth, peak_16),
        _kernel_time(t * token_bytes, 2 * t * t * hd * shape.num_layers, bandwidth, peak_16),
    ]
    prediction.decode_step_ms = step * 1e3
    prediction.decode_tokens_per_s = w.batch / step
    prediction.decode_bound = max(decode, key=lambda kernel: kernel[0])[1]
    prediction.ttft_ms = sum(seconds for seconds, _ in prefill) * 1e3
    return prediction


def predict_plan(
    shape: ModelShape,
    plan: Plan,
    capability: CapabilityDescriptor,
    workload: Workload | None = None,
    **options: Any,
) -> Prediction:
    """The prediction for what a plan (accel.planning.planner) runs: its quantized linears' planned format and its
    planned KV cache format."""
    linears = [layer for layer in plan.layers if layer.kind != KV_KIND and layer.kind != "lm_head"]
    return predict(shape, capability, linears[0].planned, plan.kv_format, workload, **options)
