"""Which module and which kernel op run each linear layer format at inference time, and loading for inference.

A layer's format follows from its QuantLinear's weight and activation arguments (artifact.layer_format names the
compressed-tensors side). Each runtime format has one module class that holds the weights the way its op reads
them (prepared once, at load) and calls the op's implementation that the kernel registry chose for the device
(`get_registry().select_kernel(op, capability)`): the CUDA backend's Triton kernel on a GPU, the portable
reference elsewhere.

    weights / activations        compressed-tensors   runtime format  op                   module
    16-bit nn.Linear             (dense)              dense           linear (torch)       DenseLinear
      block-pruned, few blocks   (dense)              dense           block_sparse_linear  BlockSparseLinear (decode)
    int4 / 16-bit                pack-quantized       w4a16           w4a16_linear         W4A16Linear (packed int32)
    int2..8 but 4 / 16-bit       pack-quantized       w{b}a16         dequant_linear       DequantLinear
    fp8 / 16-bit                 naive-quantized      w8a16-fp8       dequant_linear       DequantLinear
    int8 / int8 per token        int-quantized        w8a8-int8       w8a8_int8_linear     W8A8Int8Linear
    fp8 / fp8 per token or       float-quantized      w8a8-fp8        fp8_linear           FP8Linear
      static per tensor
    anything else                any                  (as above)      (as above)           ReferenceLinear

Dynamic per-token W8A8 layers also take activations a fused kernel already quantized (`QuantizedActivation`: the
decoder's norms before q/k/v and gate/up emit them, ops rms_norm_quant / add_rms_norm_quant) and multiply those
through op w8a8_scaled_mm, skipping their own quantization launch; `act_quant` names the format they take.

"Anything else" is what an op's contract does not cover: act-order (g_idx) weights, per-group weights under
quantized activations, static int8 or dynamic per-tensor activations, mixed int/fp8 layers, and any op not
(yet) declared in ops.OPS. ReferenceLinear runs QuantLinear's own portable forward and reports backend
"reference" for its op. A block-pruned float layer keeping few blocks runs its decode steps through the kept blocks
alone where the device runs the "block" format (accel.runtime.block_sparse).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from accel.plugins.records import KernelChoice
from accel.plugins.registry import PluginRegistry, get_registry
from accel.quantization.qlinear import QuantLinear
from accel.quantization.weight_quant import QuantizedWeight
from accel.runtime.artifact import MANIFEST_NAME, layer_format
from accel.runtime.cpu import cpu_capability
from accel.runtime.loaders import load_model
from accel.runtime.ops import OPS
from accel.runtime.packing import pack_int32
from accel.schema import CapabilityDescriptor

if TYPE_CHECKING:
    from accel.runtime.model import DecoderModel

SCALED_MM_OP = "w8a8_scaled_mm"

__all__ = [
    "DenseLinear",
    "DequantLinear",
    "FP8Linear",
    "KernelSelector",
    "LinearFormat",
    "QuantizedActivation",
    "ReferenceLinear",
    "RuntimeLinear",
    "W4A16Linear",
    "W4A16Sparse24Linear",
    "W8A8Int8Linear",
    "device_capability",
    "linear_format",
    "load_for_inference",
    "runtime_linear",
]


# ---------------------------------------------------------------------------------------------- kernels


def backend_device_type(device: torch.device) -> str:
    """The backend device type of a torch device: a ROCm build (Hygon DCU) names its GPUs "cuda" too, but they are
    accel-hygon's "dcu", not accel-cuda's devices."""
    if device.type == "cuda" and getattr(torch.version, "hip", None):
        return "dcu"
    return device.type


def device_capability(device: torch.device, registry: PluginRegistry | None = None) -> CapabilityDescriptor:
    """The capability kernel selection is asked with: the host CPU's, or that of the highest-priority available
    backend for the device's type; a bare descriptor when no backend claims the device (the reference answers)."""
    if device.type == "cpu":
        return cpu_capability()
    kind = backend_device_type(device)
    backends = sorted((registry or get_registry()).kernel_backends().values(), key=lambda spec: -spec.priority)
    for spec in backends:
        if spec.device_type == kind and spec.is_available():
            return spec.capability()
    return CapabilityDescriptor(device_name=str(device), device_type=device.type)  # type: ignore[arg-type]


class KernelSelector:
    """Asks the registry once per op who runs it on `device`, and remembers the answers (the kernel meta)."""

    def __init__(self, device: torch.device | str, registry: PluginRegistry | None = None) -> None:
        self.device = torch.device(device)
        self.registry = registry or get_registry()
        self.capability = device_capability(self.device, self.registry)
        self._choices: dict[str, KernelChoice] = {}

    def choose(self, op: str) -> KernelChoice | None:
        """The registry's kernel for `op`, or None when the op is not declared in ops.OPS (yet).

        A backend's kernel is made opaque to torch.compile (torch.compiler.disable): backends ship plain Python
        wrappers around their launches (Triton, vendor ops), which dynamo would otherwise trace and re-compile.
        The portable references are plain PyTorch and stay traceable, so compile can fuse them."""
        if op not in OPS:
            return None
        if op not in self._choices:
            choice = self.registry.select_kernel(op, self.capability)
            if choice.backend != "reference":
                choice = dataclasses.replace(choice, impl=torch.compiler.disable(choice.impl))
            self._choices[op] = choice
        return self._choices[op]


# ---------------------------------------------------------------------------------------------- modules


class RuntimeLinear(nn.Module):
    """A linear layer in one runtime format: y = x @ W^T (+ b). `op` is the kernel op it calls and `backend`
    who runs it there (kernel meta)."""

    op: str = "linear"

    def __init__(self, in_features: int, out_features: int, backend: str) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.backend = backend

    @property
    def act_quant(self) -> str | None:
        """The activation format ("int8" / "fp8") this layer also takes already quantized per token, as a
        QuantizedActivation from a fused norm or SwiGLU; None: 16-bit activations only."""
        return None

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        """One layer computing the parts' outputs side by side (q|k|v, gate|up), or None if this format
        cannot stack its weights. Stacking rows changes no output value: each row is its own dot product."""
        return None

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, op={self.op}, backend={self.backend}"


def _stack_bias(parts: Sequence[Any]) -> torch.Tensor | None:
    """Biases of stacked parts; a part without one contributes zeros (Qwen2 has q/k/v biases, Llama none)."""
    if all(part.bias is None for part in parts):
        return None
    ref = next(part.bias for part in parts if part.bias is not None)
    return torch.cat([part.bias if part.bias is not None else ref.new_zeros(part.out_features) for part in parts])


def _same(parts: Sequence[Any], *attrs: str) -> bool:
    """True when every part agrees on each attribute (values, or None-ness and dtype for tensors)."""
    for attr in attrs:
        values = [getattr(part, attr) for part in parts]
        if isinstance(values[0], torch.Tensor) or values[0] is None:
            kinds = {(v is None, None if v is None else (v.dtype, v.shape[1:])) for v in values}
            if len(kinds) > 1:
                return False
        elif len(set(values)) > 1:
            return False
    return True


class DenseLinear(RuntimeLinear):
    """16-bit (or fp32) weights through torch's own matmul."""

    op = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__(weight.shape[1], weight.shape[0], backend="torch")
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        layers = [part for part in parts if isinstance(part, DenseLinear)]
        if len(layers) != len(parts) or not _same(layers, "weight"):
            return None
        return cls(torch.cat([layer.weight for layer in layers]), _stack_bias(layers))


class NormedActivation(NamedTuple):
    """An RMSNorm's output left unfinished for the W4A16 linear after it (norm_fold_ops): x = h * norm weight in the
    compute dtype, float32 partial sums ss [..., P] of h^2 per row, whose 1 / sqrt(sum(ss) / K + eps) the linear
    applies itself (op w4a16_linear_rms), and the norm's eps. Made by the linear before the norm (op
    w4a16_linear_residual)."""

    x: torch.Tensor
    ss: torch.Tensor
    eps: float


RESIDUAL_OP = "w4a16_linear_residual"
RMS_OP = "w4a16_linear_rms"
SILU_OP = "w4a16_linear_silu_mul"
ROPE_KV_OP = "w4a16_linear_rope_kv"
FOLD_OPS = (RESIDUAL_OP, RMS_OP, SILU_OP, ROPE_KV_OP)
FOLD_SIDES = ("residual", "rms", "silu", "rope")  # W4A16Linear.can_fold's names for them


class W4A16Linear(RuntimeLinear):
    """4-bit weights packed once at load in compressed-tensors' pack-quantized layout (int32 [N, K/8]), scales
    [N, G] in the compute dtype, signed int8 zero points [N, G] or None; op w4a16_linear.

    `folds` are the kernels of the folding ops (w4a16_linear_residual, w4a16_linear_rms, w4a16_linear_silu_mul;
    norm_fold_ops; w4a16_linear_rope_kv, qkv_fold_ops) the registry chose: this layer can finish a residual add and
    the next norm's weight in its epilogue (`forward_residual`), take a NormedActivation in place of x, (stacked
    gate | up) return SwiGLU's silu(gate) * up (`forward_silu_mul`) and (stacked q | k | v) rotate q and k and store
    k and v into the KV cache (`forward_rope_kv`), where the backend that prepared its weights runs them
    (`can_fold`)."""

    op = "w4a16_linear"

    def __init__(
        self,
        weight_packed: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_zero_point: torch.Tensor | None,
        group_size: int,
        in_features: int,
        bias: torch.Tensor | None,
        kernel: KernelChoice,
        kernel_kwargs: dict[str, Any] | None = None,
        folds: tuple[KernelChoice | None, ...] = (None, None, None, None),
    ) -> None:
        super().__init__(in_features, weight_packed.shape[0], backend=kernel.backend)
        self.folds = folds
        if kernel_kwargs is None:  # fresh artifact tensors: let the backend convert them once (KernelChoice.prepare)
            kernel_kwargs = {}
            if kernel.prepare is not None:
                args, kernel_kwargs = kernel.prepare(weight_packed, weight_scale, weight_zero_point, group_size)
                weight_packed, weight_scale, weight_zero_point, group_size = args
        self.kernel_kwargs = kernel_kwargs
        self.group_size = group_size
        self.kernel = kernel
        self.register_buffer("weight_packed", weight_packed)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", weight_zero_point)
        self.register_buffer("bias", bias)

    def _weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int]:
        return self.weight_packed, self.weight_scale, self.weight_zero_point, self.group_size

    def forward(self, x: torch.Tensor | NormedActivation) -> torch.Tensor:
        if isinstance(x, NormedActivation):
            rms = self.folds[1]
            if rms is None:
                raise ValueError(f"{RMS_OP} has no kernel here: this layer takes plain activations only")
            y = rms.impl(x.x, *self._weights(), x.ss, x.eps, **self.kernel_kwargs)
        else:
            y = self.kernel.impl(x, *self._weights(), **self.kernel_kwargs)
        return y if self.bias is None else y + self.bias

    def forward_residual(
        self, x: torch.Tensor, residual: torch.Tensor, norm_weight: torch.Tensor, eps: float
    ) -> tuple[NormedActivation, torch.Tensor]:
        """(the next norm's NormedActivation, h) with h = self(x) + residual: the residual add and the elementwise half
        of the RMSNorm after it in this layer's epilogue (op w4a16_linear_residual); no bias (can_fold)."""
        op = self.folds[0]
        if op is None or self.bias is not None:
            raise ValueError(f"{RESIDUAL_OP} has no kernel here, or this layer has a bias: use forward, then the norm")
        h, hw, ss = op.impl(x, *self._weights(), residual, norm_weight, **self.kernel_kwargs)
        return NormedActivation(hw, ss, eps), h

    def forward_silu_mul(self, x: torch.Tensor | NormedActivation) -> torch.Tensor:
        """silu(gate) * up of this stacked gate | up layer's output, in its epilogue (op w4a16_linear_silu_mul); x
        plain or a NormedActivation; no bias (can_fold)."""
        op = self.folds[2]
        if op is None or self.bias is not None:
            raise ValueError(f"{SILU_OP} has no kernel here, or this layer has a bias: use forward, then silu_and_mul")
        if isinstance(x, NormedActivation):
            return op.impl(x.x, *self._weights(), x.ss, x.eps, **self.kernel_kwargs)
        return op.impl(x, *self._weights(), None, 0.0, **self.kernel_kwargs)

    def forward_rope_kv(
        self,
        x: torch.Tensor | NormedActivation,
        cos: torch.Tensor,
        sin: torch.Tensor,
        positions: torch.Tensor,
        stores: tuple[torch.Tensor | None, ...],
        kv_format: str,
        num_heads: int,
    ) -> torch.Tensor:
        """q rotated [B, T, H, D] of this stacked q | k | v layer's output, with k rotated and v stored at
        `positions` of a layer's KV cache stores (k_codes, k_scale, k_zero, v_codes, v_scale, v_zero), in its
        epilogue (op w4a16_linear_rope_kv); x [B, T, K] plain or a NormedActivation; no bias (can_fold)."""
        op = self.folds[FOLD_SIDES.index("rope")]
        if op is None or self.bias is not None:
            raise ValueError(
                f"{ROPE_KV_OP} has no kernel here, or this layer has a bias: use forward, then the cache's write_rotary"
            )
        if isinstance(x, NormedActivation):
            xs, ss, eps = x.x, x.ss, x.eps
        else:
            xs, ss, eps = x, None, 0.0
        return op.impl(xs, *self._weights(), ss, eps, cos, sin, positions, *stores, kv_format, num_heads,
                       **self.kernel_kwargs)

    def can_fold(self, side: str, rows: int | None = None, **context: Any) -> bool:
        """Whether this layer folds the norm after it ("residual": no bias, its kernel's backend runs
        w4a16_linear_residual), the norm before it ("rms": w4a16_linear_rms), SwiGLU after it ("silu": no bias, an
        even out_features; w4a16_linear_silu_mul) or RoPE and the KV cache write after it ("rope": no bias;
        w4a16_linear_rope_kv) on the weights its backend prepared; with `rows`, also whether that backend runs its
        own fused kernel for that many activation rows (its `accepts`, given `context`: for "rope" the cache's
        kv_format, head_dim and num_heads)."""
        index = FOLD_SIDES.index(side)
        choice = self.folds[index] if index < len(self.folds) else None
        if choice is None or choice.backend != self.kernel.backend:
            return False
        if (side != "rms" and self.bias is not None) or (side == "silu" and self.out_features % 2):
            return False
        if rows is None or choice.accepts is None:
            return True
        dtype, device = self.weight_scale.dtype, self.weight_packed.device
        return choice.accepts(rows, dtype, device, *self._weights(), **self.kernel_kwargs, **context)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        layers = [part for part in parts if isinstance(part, W4A16Linear)]
        if len(layers) != len(parts):
            return None
        if not _same(layers, "group_size", "in_features", "weight_scale", "weight_zero_point", "backend"):
            return None
        first = layers[0]
        zero = None if first.weight_zero_point is None else torch.cat([p.weight_zero_point for p in layers])
        packed, scale = torch.cat([p.weight_packed for p in layers]), torch.cat([p.weight_scale for p in layers])
        # Prepared weights are concatenated as they are (a backend's preparation is per output row).
        return cls(
            packed, scale, zero, first.group_size, first.in_features, _stack_bias(layers), first.kernel,
            first.kernel_kwargs, first.folds,
        )


class W4A16Sparse24Linear(RuntimeLinear):
    """A 2:4-pruned W4A16 layer: the dense W4A16Linear for prefill, and the compact 2:4 form (kept codes and their
    positions, prepared once by the backend) for the decode M its kernel serves; op w4a16_sparse24_linear.

    Holding both costs 1.75x the dense int4 bytes; the sparse path reads 3/4 of them per decode step."""

    op = "w4a16_sparse24_linear"
    SPARSE_MAX_M = 2  # the decode M the 2:4 GEMV is tuned for (accel_cuda w4a16_sparse24_gemv.sparse24_plan)

    def __init__(
        self,
        dense: W4A16Linear,
        values: torch.Tensor,
        indices: torch.Tensor,
        kernel: KernelChoice,
        kernel_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(dense.in_features, dense.out_features, backend=kernel.backend)
        if kernel_kwargs is None:
            kernel_kwargs = {}
            if kernel.prepare is not None:
                args, kernel_kwargs = kernel.prepare(
                    values, indices, dense.weight_scale, dense.weight_zero_point, dense.group_size
                )
                values, indices = args[0], args[1]
        self.dense = dense
        self.kernel = kernel
        self.kernel_kwargs = kernel_kwargs
        self.register_buffer("values", values)
        self.register_buffer("indices", indices)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() // self.in_features > self.SPARSE_MAX_M:
            return self.dense(x)
        d = self.dense
        y = self.kernel.impl(
            x, self.values, self.indices, d.weight_scale, d.weight_zero_point, d.group_size, **self.kernel_kwargs
        )
        return y if d.bias is None else y + d.bias

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        layers = [part for part in parts if isinstance(part, W4A16Sparse24Linear)]
        if len(layers) != len(parts) or not _same(layers, "backend"):
            return None
        if any(layer.kernel_kwargs != layers[0].kernel_kwargs for layer in layers):
            return None
        dense = W4A16Linear.fuse([layer.dense for layer in layers])
        if dense is None:
            return None
        values, indices = torch.cat([p.values for p in layers]), torch.cat([p.indices for p in layers])
        return cls(dense, values, indices, layers[0].kernel, layers[0].kernel_kwargs)  # type: ignore[arg-type]


def sparse24_linear(module: QuantLinear, dense: W4A16Linear, kernels: KernelSelector) -> RuntimeLinear:
    """`dense` with the 2:4 path beside it when `module` was loaded with a 2:4 mask and a backend (not the portable
    reference, which would rebuild W on every call) has a 2:4 kernel for this device; else `dense` itself."""
    mask = getattr(module, "accel_sparse_mask", None)
    if mask is None or getattr(module, "accel_sparse_pattern", None) != "2:4" or module.in_features % 16:
        return dense
    kernel = kernels.choose(W4A16Sparse24Linear.op)
    if kernel is None or kernel.backend == "reference":
        return dense
    values, indices = compact_2_4(module.weight_q, mask.to(module.weight_q.device))
    device = kernels.device
    return W4A16Sparse24Linear(dense, values.to(device), indices.to(device), kernel)


def compact_2_4(codes: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """accel's compact 2:4 form (accel.sparsity.storage, layout nm) of int8 codes [N, K] under a 2:4 mask, in torch on
    the codes' device: the kept codes packed 8 a word [N, K/16], and their 2-bit positions, 4 a byte, least
    significant first [N, K/8] uint8."""
    from accel.sparsity.storage import _nm_slots

    n, k = codes.shape
    slots = _nm_slots(mask, 2, 4)  # [N, K/4, 2] kept positions, ascending
    values = codes.reshape(n, k // 4, 4).gather(2, slots).reshape(n, k // 2)
    pos = slots.reshape(n, k // 8, 4).to(torch.int32)
    indices = (pos[..., 0] | pos[..., 1] << 2 | pos[..., 2] << 4 | pos[..., 3] << 6).to(torch.uint8)
    return pack_int32(values, 4), indices


class DequantLinear(RuntimeLinear):
    """Weight-only int (any bit width) or fp8 codes, unpacked [N, K], scales [N, G]; op dequant_linear."""

    op = "dequant_linear"

    def __init__(
        self,
        weight_q: torch.Tensor,
        weight_scale: torch.Tensor,
        weight_zero_point: torch.Tensor | None,
        group_size: int,
        bias: torch.Tensor | None,
        kernel: KernelChoice,
    ) -> None:
        super().__init__(weight_q.shape[1], weight_q.shape[0], backend=kernel.backend)
        self.group_size = group_size
        self.kernel = kernel
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("weight_zero_point", weight_zero_point)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.impl(x, self.weight_q, self.weight_scale, self.weight_zero_point, self.group_size, self.bias)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        layers = [part for part in parts if isinstance(part, DequantLinear)]
        if len(layers) != len(parts):
            return None
        if not _same(layers, "group_size", "weight_q", "weight_scale", "weight_zero_point", "backend"):
            return None
        first = layers[0]
        zero = None if first.weight_zero_point is None else torch.cat([p.weight_zero_point for p in layers])
        codes, scale = torch.cat([p.weight_q for p in layers]), torch.cat([p.weight_scale for p in layers])
        return cls(codes, scale, zero, first.group_size, _stack_bias(layers), first.kernel)


class QuantizedActivation(NamedTuple):
    """Activations already quantized per token (dynamic, symmetric) by the kernel that produced them, a fused norm
    or SwiGLU (ops rms_norm_quant, add_rms_norm_quant, silu_and_mul_quant): int8 / e4m3 codes [..., K], float32
    scales [..., 1], and the dtype the activations had, which is the linear's output dtype. A W8A8 linear takes
    them in place of x and skips its own quantization launch (vLLM's norm / activation + quant fusion)."""

    codes: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype


class W8A8Int8Linear(RuntimeLinear):
    """int8 weights [N, K] with per-channel float32 scales [N, 1]; activations quantized per token at run time
    (dynamic, symmetric int8); op w8a8_int8_linear, or op w8a8_scaled_mm for already quantized activations."""

    op = "w8a8_int8_linear"

    def __init__(
        self,
        weight_q: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        kernel: KernelChoice,
        scaled_mm: KernelChoice | None = None,
    ) -> None:
        super().__init__(weight_q.shape[1], weight_q.shape[0], backend=kernel.backend)
        self.kernel = kernel
        self.scaled_mm = scaled_mm
        self.register_buffer("weight_q", weight_q)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("bias", bias)

    @property
    def act_quant(self) -> str | None:
        """"int8": the activation format a QuantizedActivation input must have (None: takes 16-bit x only)."""
        return None if self.scaled_mm is None else "int8"

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            return _scaled_mm(self.scaled_mm, x, self.weight_q, self.weight_scale, self.bias)
        return self.kernel.impl(x, self.weight_q, self.weight_scale, self.bias)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        layers = [part for part in parts if isinstance(part, W8A8Int8Linear)]
        if len(layers) != len(parts) or not _same(layers, "weight_q", "backend"):
            return None
        codes, scale = torch.cat([p.weight_q for p in layers]), torch.cat([p.weight_scale for p in layers])
        return cls(codes, scale, _stack_bias(layers), layers[0].kernel, layers[0].scaled_mm)


def _scaled_mm(
    choice: KernelChoice | None,
    x: QuantizedActivation,
    weight: torch.Tensor,
    weight_scale: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """(codes @ weight^T) * s_x * s_w (+ b) in x.dtype, on the kernel chosen for op w8a8_scaled_mm."""
    if choice is None:
        raise ValueError(f"this layer takes 16-bit activations only: op {SCALED_MM_OP} is not available")
    return choice.impl(x.codes, x.scale, weight, weight_scale, bias, x.dtype)


class FP8Linear(RuntimeLinear):
    """fp8 e4m3 weights [N, K] with per-channel float32 scales [N, 1]; activations quantized to fp8 per token at
    run time, or with a static per-tensor `input_scale`; op fp8_linear."""

    op = "fp8_linear"

    def __init__(
        self,
        weight_fp8: torch.Tensor,
        weight_scale: torch.Tensor,
        input_scale: torch.Tensor | None,
        bias: torch.Tensor | None,
        kernel: KernelChoice,
        scaled_mm: KernelChoice | None = None,
    ) -> None:
        super().__init__(weight_fp8.shape[1], weight_fp8.shape[0], backend=kernel.backend)
        self.kernel = kernel
        self.scaled_mm = scaled_mm
        self.register_buffer("weight_fp8", weight_fp8)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("input_scale", input_scale)
        self.register_buffer("bias", bias)

    @property
    def act_quant(self) -> str | None:
        """"fp8" for dynamic per-token activations (a QuantizedActivation input of e4m3 codes); None with a static
        input scale or without op w8a8_scaled_mm: 16-bit x only."""
        return "fp8" if self.scaled_mm is not None and self.input_scale is None else None

    def forward(self, x: torch.Tensor | QuantizedActivation) -> torch.Tensor:
        if isinstance(x, QuantizedActivation):
            if self.input_scale is not None:
                raise ValueError("a static input_scale layer quantizes its own input: pass 16-bit activations")
            return _scaled_mm(self.scaled_mm, x, self.weight_fp8, self.weight_scale, self.bias)
        return self.kernel.impl(x, self.weight_fp8, self.weight_scale, self.input_scale, self.bias)

    @classmethod
    def fuse(cls, parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
        """Parts stack when they quantize their (shared) input alike: all dynamic, or one static scale."""
        layers = [part for part in parts if isinstance(part, FP8Linear)]
        if len(layers) != len(parts) or not _same(layers, "input_scale", "backend"):
            return None
        scales = [p.input_scale for p in layers]
        if scales[0] is not None and not all(torch.equal(scales[0], scale) for scale in scales):
            return None
        codes, scale = torch.cat([p.weight_fp8 for p in layers]), torch.cat([p.weight_scale for p in layers])
        return cls(codes, scale, scales[0], _stack_bias(layers), layers[0].kernel, layers[0].scaled_mm)


class ReferenceLinear(RuntimeLinear):
    """QuantLinear's portable forward (dequantize the whole weight, then matmul), for formats whose op is not
    declared yet and for act-order weights; reported as backend "reference" for `op`."""

    def __init__(self, module: QuantLinear, op: str) -> None:
        super().__init__(module.in_features, module.out_features, backend="reference")
        self.op = op
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


# ---------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class LinearFormat:
    """A layer format at run time: its name, compressed-tensors' format, the op it needs, the module class."""

    name: str
    layer_format: str
    op: str
    module: type[RuntimeLinear]


def linear_format(module: nn.Module) -> LinearFormat:
    """The runtime format of a Linear or QuantLinear (the table in the module docstring)."""
    if not isinstance(module, QuantLinear):
        if not isinstance(module, nn.Linear):
            raise TypeError(f"expected nn.Linear or QuantLinear, got {type(module).__name__}")
        return LinearFormat("dense", "dense", "linear", DenseLinear)
    weights, acts = module.weight_args, module.act_args
    fmt = layer_format(weights, acts)
    act_order = module.weight_g_idx is not None
    if acts is not None:
        per_row = weights.strategy in ("channel", "tensor") and not act_order
        if weights.is_fp8 or acts.type == "float":
            covered = per_row and weights.is_fp8 and acts.type == "float" and (acts.strategy == "token") == acts.dynamic
            return LinearFormat("w8a8-fp8", fmt, "fp8_linear", FP8Linear if covered else ReferenceLinear)
        covered = per_row and weights.num_bits == 8 and weights.symmetric and acts.dynamic and acts.strategy == "token"
        return LinearFormat("w8a8-int8", fmt, "w8a8_int8_linear", W8A8Int8Linear if covered else ReferenceLinear)
    if weights.is_fp8:
        return LinearFormat("w8a16-fp8", fmt, "dequant_linear", ReferenceLinear if act_order else DequantLinear)
    if weights.num_bits == 4:
        return LinearFormat("w4a16", fmt, "w4a16_linear", ReferenceLinear if act_order else W4A16Linear)
    return LinearFormat(
        f"w{weights.num_bits}a16", fmt, "dequant_linear", ReferenceLinear if act_order else DequantLinear
    )


def _per_row_params(module: QuantLinear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(scale [N, G] in `dtype`, int8 zero point [N, G] or None, group size; -1 = one group per row).
    A per-tensor scale is broadcast to one per row, the same weight in the channel layout the ops read."""
    args, n = module.weight_args, module.out_features
    scale, zero = module.weight_scale, module.weight_zero_point
    if args.symmetric:
        zero = None
    if args.strategy == "tensor":
        scale = scale.reshape(1, 1).expand(n, 1)
        zero = None if zero is None else zero.reshape(1, 1).expand(n, 1)
    group = args.group_size if args.strategy == "group" else -1
    zero = None if zero is None else zero.to(torch.int8).contiguous()
    return scale.to(dtype).contiguous(), zero, group


def _on_device(module: QuantLinear, device: torch.device) -> QuantLinear:
    """`module` itself when its tensors are on `device`, else a copy there (the caller's model is left as is)."""
    if all(buffer.device == device for buffer in module.buffers()):
        return module

    def move(tensor: torch.Tensor | None) -> torch.Tensor | None:
        return None if tensor is None else tensor.to(device)

    qweight = module.qweight
    moved = QuantizedWeight(
        move(qweight.q), move(qweight.scale), move(qweight.zero_point), qweight.args, move(qweight.g_idx)
    )
    copy = QuantLinear(moved, move(module.bias), module.act_args, move(module.input_scale))
    # A pruned layer's mask, pattern and block shape travel with it.
    for attr in ("accel_sparse_mask", "accel_sparse_pattern", "accel_sparse_block_shape"):
        if hasattr(module, attr):
            setattr(copy, attr, getattr(module, attr))
    return copy


def runtime_linear(module: nn.Module, kernels: KernelSelector, dtype: torch.dtype) -> RuntimeLinear:
    """The runtime module for one Linear / QuantLinear, its weights prepared once for its op, on
    `kernels.device`, computing in `dtype`. Formats whose op is not registered fall back to ReferenceLinear."""
    device = kernels.device
    fmt = linear_format(module)
    if fmt.module is DenseLinear:
        assert isinstance(module, nn.Linear)
        from accel.runtime.block_sparse import with_block_sparsity  # block_sparse.py builds on this module's linears

        bias = None if module.bias is None else module.bias.detach().to(device, dtype)
        return with_block_sparsity(module, DenseLinear(module.weight.detach().to(device, dtype), bias), kernels)
    assert isinstance(module, QuantLinear)
    module = _on_device(module, device)
    kernel = kernels.choose(fmt.op)
    if fmt.module is ReferenceLinear or kernel is None:
        return ReferenceLinear(module, fmt.op)
    bias = None if module.bias is None else module.bias.to(dtype)
    if fmt.module in (W8A8Int8Linear, FP8Linear):
        scale, _, _ = _per_row_params(module, torch.float32)  # the ops scale in float32; symmetric, per row
        scaled_mm = kernels.choose(SCALED_MM_OP)  # for activations a fused kernel already quantized
        if fmt.module is W8A8Int8Linear:
            return W8A8Int8Linear(module.weight_q, scale, bias, kernel, scaled_mm)
        input_scale = None if module.input_scale is None else module.input_scale.reshape(1).to(torch.float32)
        return FP8Linear(module.weight_q, scale, input_scale, bias, kernel, scaled_mm)
    scale, zero, group = _per_row_params(module, dtype)
    if fmt.module is W4A16Linear:
        packed = pack_int32(module.weight_q, 4)
        folds = tuple(kernels.choose(op) for op in FOLD_OPS)
        dense = W4A16Linear(packed, scale, zero, group, module.in_features, bias, kernel, folds=folds)
        return sparse24_linear(module, dense, kernels)
    return DequantLinear(module.weight_q, scale, zero, group, bias, kernel)


def fuse_linears(parts: Sequence[RuntimeLinear]) -> RuntimeLinear | None:
    """The parts stacked into one layer (one kernel launch instead of several), or None if they cannot be."""
    return type(parts[0]).fuse(parts) if all(type(part) is type(parts[0]) for part in parts) else None


# ---------------------------------------------------------------------------------------------- loading


def load_for_inference(
    source: str | os.PathLike[str] | None = None,
    *,
    kv_format: str = "none",
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    registry: PluginRegistry | None = None,
) -> DecoderModel:
    """The runtime model (accel.runtime.model.DecoderModel) for `source`, with its tokenizer as `.tokenizer`.

    `source` is an accel artifact directory (has accel-manifest.json: its QuantLinears become the runtime
    linears of their formats), a Hugging Face model directory or id, or None / "bundled" for the bundled model.
    `kv_format` ("none", "int8", "fp8", "int4") is the KV cache format Generators of this model use by default.
    """
    from accel.runtime import model as runtime_model  # model.py builds on this module's linears

    device = torch.device(device)
    path = None if source is None else Path(source).expanduser()
    if path is not None and (path / MANIFEST_NAME).is_file():
        return runtime_model.from_artifact(path, dtype=dtype, device=device, kv_format=kv_format, registry=registry)
    hf_model, tokenizer = load_model(None if source is None else str(source), dtype=dtype, device=device)
    model = runtime_model.from_hf(hf_model, dtype=dtype, device=device, kv_format=kv_format, registry=registry)
    model.tokenizer = tokenizer
    return model
