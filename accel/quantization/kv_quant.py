"""KV cache quantization: int8, int4 and fp8 keys and values, quantized on the fly as the model decodes.

Tensors are [batch, kv_heads, seq, head_dim]. A scale (and zero point) covers one (token, head) over head_dim
("token"), or one (head, channel) over the tokens of a chunk ("channel"); KIVI is keys per channel, values per
token. Integer codes follow weight_quant's conventions with signed ranges, qmin = -2^(b-1), qmax = 2^(b-1) - 1:
    symmetric:  s = max|x| / ((qmax - qmin) / 2),                          q = clamp(round(x / s), qmin, qmax)
    asymmetric: s = max((max x - min x) / (qmax - qmin), max|x| * 2^-16),  zp = qmin - round(min x / s),
                q = clamp(round(x / s) + zp, qmin, qmax)
    x^ = (q - zp) * s
Unlike weight_quant, the asymmetric range is the true [min, max] (as KIVI's), not widened to include 0: a key
channel's values over a chunk often sit far from 0, and widening would waste most of the grid. zp is then any
integer, so it is stored as a float like the scale; the floor max|x| * 2^-16 keeps |zp| <= 2^16 + 2^(b-1) (exact
in fp32) when a range is (nearly) one value. fp8 is e4m3: s = max|x| / 448, q = fp8(clamp(x / s, -448, 448)).
A scale of 0 (all zeros) becomes eps. Scales and zero points are stored as fp32 (SCALE_DTYPE), chosen for
accuracy: large zero points stay exact and no grid is rounded (fp16 would save 2 bytes a scale). Codes are computed
with the stored scale, so x^ is exactly the grid they index. Error: |x - x^| <= s / 2 for integers;
|x - x^| <= max(|x| * 2^-4, s * 2^-10) for fp8 (half an e4m3 ulp, subnormals included).

Storage, counted by `nbytes`: int8 codes as int8, int4 codes packed two per uint8 along head_dim, fp8 codes as
float8_e4m3fn, 16 bits as the input tensor unchanged (the full-precision baseline).
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers.cache_utils import Cache, DynamicLayer

from accel.evaluation.perplexity import PerplexityResult
from accel.quantization.weight_quant import FP8_DTYPE, FP8_MAX
from accel.schema import KVCacheSchema, QuantizationProfile

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = [
    "RESIDUAL_LENGTH",
    "SCALE_DTYPE",
    "KVArgs",
    "KVPerplexityResult",
    "KVQuantArgs",
    "QuantizedKV",
    "QuantizedKVCache",
    "QuantizedKVLayer",
    "cache_kwarg",
    "evaluate_kv_perplexity",
    "kv_args",
    "kv_cache_schema",
    "pack_int4",
    "quantize_kv",
    "unpack_int4",
]

SCALE_DTYPE = torch.float32
RESIDUAL_LENGTH = 32  # KIVI's R: tokens per per-channel chunk, kept in full precision until the chunk is full
_RANGE_FLOOR = 2.0**-16  # asymmetric scales are at least max|x| * 2^-16 (module docstring)

Granularity = Literal["token", "channel"]
Phase = Literal["prefill", "decode"]


@dataclass(frozen=True)
class KVQuantArgs:
    """How one of K or V is quantized. bits 16 stores it unchanged; type "float" with 8 bits is fp8 e4m3.

    `symmetric=None` picks the default: asymmetric for int4 (KIVI's choice), symmetric for int8 and fp8.
    """

    bits: Literal[4, 8, 16] = 8
    type: Literal["int", "float"] = "int"
    granularity: Granularity = "token"
    symmetric: bool | None = None

    def __post_init__(self) -> None:
        if self.bits not in (4, 8, 16):
            raise ValueError(f"KV bits must be 4, 8 or 16, got {self.bits}")
        if self.granularity not in ("token", "channel"):
            raise ValueError(f"KV granularity must be 'token' or 'channel', got {self.granularity!r}")
        if self.type == "float" and self.bits == 4:
            raise ValueError("KV type 'float' has no 4-bit format; use type 'int' for 4-bit KV")
        if self.type == "float" and self.bits == 8 and self.symmetric is False:
            raise ValueError("fp8 KV is symmetric (absmax scales); drop symmetric=False")
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", not (self.bits == 4 and self.type == "int"))

    @property
    def quantizes(self) -> bool:
        return self.bits < 16

    @property
    def is_fp8(self) -> bool:
        return self.type == "float" and self.bits == 8

    @property
    def per_channel(self) -> bool:
        """Scales span the tokens of a chunk, so tokens are quantized in chunks (16 bits never is)."""
        return self.quantizes and self.granularity == "channel"

    @property
    def qmin(self) -> float:
        return -FP8_MAX if self.is_fp8 else -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> float:
        return FP8_MAX if self.is_fp8 else 2 ** (self.bits - 1) - 1

    @classmethod
    def from_profile(cls, profile: QuantizationProfile, phase: Phase) -> KVArgs:
        """Keys' and values' args for the prefill or decode phase of a profile (kv_bits_<phase>, kv_type,
        kv_strategy)."""
        if phase not in ("prefill", "decode"):
            raise ValueError(f"phase must be 'prefill' or 'decode', got {phase!r}")
        bits = profile.kv_bits_prefill if phase == "prefill" else profile.kv_bits_decode
        return kv_args(bits, profile.kv_type, profile.kv_strategy)


class KVArgs(NamedTuple):
    """The args of one phase for keys and for values, which may differ (KIVI: keys per channel, values per token)."""

    keys: KVQuantArgs
    values: KVQuantArgs


def kv_args(
    bits: int,
    type: Literal["int", "float"] = "int",
    strategy: Literal["token", "channel", "kivi"] = "token",
    symmetric: bool | None = None,
) -> KVArgs:
    """Keys' and values' args from a strategy: "token" and "channel" apply to both, "kivi" is keys per channel and
    values per token."""
    if strategy not in ("token", "channel", "kivi"):
        raise ValueError(f"KV strategy must be 'token', 'channel' or 'kivi', got {strategy!r}")
    key_granularity: Granularity = "token" if strategy == "token" else "channel"
    value_granularity: Granularity = "channel" if strategy == "channel" else "token"
    return KVArgs(
        KVQuantArgs(bits, type, key_granularity, symmetric),  # type: ignore[arg-type]
        KVQuantArgs(bits, type, value_granularity, symmetric),  # type: ignore[arg-type]
    )


def _as_kv_args(args: KVArgs | KVQuantArgs) -> KVArgs:
    """One KVQuantArgs means the same args for keys and values."""
    return args if isinstance(args, KVArgs) else KVArgs(args, args)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Signed 4-bit codes int8 [..., d] -> uint8 [..., d / 2]: element 2i in the low nibble, 2i + 1 in the high."""
    if codes.shape[-1] % 2:
        raise ValueError(f"int4 packing needs an even last dimension, got {codes.shape[-1]}")
    nibbles = codes.view(torch.uint8) & 0x0F  # two's complement low 4 bits: -1 -> 0xF
    pairs = nibbles.unflatten(-1, (-1, 2))  # [..., d / 2, 2]
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [..., d / 2] -> signed codes int8 [..., d], the inverse of pack_int4."""
    nibbles = torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)  # [..., d], values 0..15
    return (nibbles.to(torch.int8) ^ 8) - 8  # sign-extend 4 bits: n >= 8 -> n - 16


@dataclass(frozen=True)
class QuantizedKV:
    """Quantized K or V [batch, kv_heads, seq, head_dim] (module docstring has the formulas and storage).

    `scale` and `zero_point` are [b, h, seq, 1] per token or [b, h, 1, head_dim] per channel; zero_point is None
    when symmetric; both are None for 16 bits, where `codes` is the tensor itself.
    """

    codes: torch.Tensor
    scale: torch.Tensor | None
    zero_point: torch.Tensor | None
    args: KVQuantArgs

    @property
    def seq_len(self) -> int:
        return self.codes.shape[-2]

    @property
    def nbytes(self) -> int:
        """Bytes stored: codes + scales + zero points."""
        tensors = [t for t in (self.codes, self.scale, self.zero_point) if t is not None]
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """x^ = (q - zp) * s, computed in fp32 (float64 if asked) and returned in `dtype`."""
        if not self.args.quantizes:
            return self.codes.to(dtype)
        work = torch.float64 if dtype == torch.float64 else torch.float32
        codes = unpack_int4(self.codes) if self.args.bits == 4 else self.codes
        values = codes.to(work)  # [b, h, s, d]
        if self.zero_point is not None:
            values = values - self.zero_point.to(work)
        return (values * self.scale.to(work)).to(dtype)

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> QuantizedKV:
        """Apply a batch-dimension operation (index_select, repeat_interleave) to every stored tensor."""
        return replace(
            self,
            codes=fn(self.codes),
            scale=None if self.scale is None else fn(self.scale),
            zero_point=None if self.zero_point is None else fn(self.zero_point),
        )


def quantize_kv(x: torch.Tensor, args: KVQuantArgs) -> QuantizedKV:
    """Quantize K or V [batch, kv_heads, seq, head_dim]; per token over head_dim, per channel over seq."""
    if x.ndim != 4:
        raise ValueError(f"expected K or V as [batch, kv_heads, seq, head_dim], got shape {tuple(x.shape)}")
    if not args.quantizes:
        return QuantizedKV(codes=x, scale=None, zero_point=None, args=args)
    work = x if x.dtype == torch.float64 else x.float()
    dim = -1 if args.granularity == "token" else -2
    x_min = work.amin(dim=dim, keepdim=True)  # [b, h, s, 1] per token, [b, h, 1, d] per channel
    x_max = work.amax(dim=dim, keepdim=True)
    absmax = torch.maximum(x_min.abs(), x_max.abs())
    if args.is_fp8:
        scale = absmax / FP8_MAX  # s = max|x| / 448
    elif args.symmetric:
        scale = absmax / ((args.qmax - args.qmin) / 2)  # s = max|x| / ((qmax - qmin) / 2)
    else:  # s = max((max x - min x) / (qmax - qmin), max|x| * 2^-16)
        scale = torch.maximum((x_max - x_min) / (args.qmax - args.qmin), absmax * _RANGE_FLOOR)
    scale = torch.where(scale == 0, torch.finfo(work.dtype).eps, scale).to(SCALE_DTYPE)
    s = scale.to(work.dtype)  # the stored scale: codes are computed with what dequantize will read
    if args.is_fp8:
        codes = torch.clamp(work / s, -FP8_MAX, FP8_MAX).to(FP8_DTYPE)  # q = fp8(clamp(x / s, -448, 448))
        return QuantizedKV(codes=codes, scale=scale, zero_point=None, args=args)
    zero_point = None if args.symmetric else args.qmin - torch.round(x_min / s)  # zp = qmin - round(min x / s)
    q = torch.round(work / s) if zero_point is None else torch.round(work / s) + zero_point  # round(x / s) + zp
    codes = torch.clamp(q, args.qmin, args.qmax).to(torch.int8)  # [b, h, s, d]
    if args.bits == 4:
        codes = pack_int4(codes)  # [b, h, s, d / 2]
    zp = None if zero_point is None else zero_point.to(SCALE_DTYPE)
    return QuantizedKV(codes=codes, scale=scale, zero_point=zp, args=args)


def _concat_tokens(first: QuantizedKV, second: QuantizedKV) -> QuantizedKV:
    """Append per-token chunks along seq: each token has its own scales, so this is the same storage."""
    return QuantizedKV(
        codes=torch.cat([first.codes, second.codes], dim=-2),
        scale=None if first.scale is None else torch.cat([first.scale, second.scale], dim=-2),
        zero_point=None if first.zero_point is None else torch.cat([first.zero_point, second.zero_point], dim=-2),
        args=first.args,
    )


class _KVStream:
    """K or V of one layer: quantized chunks, plus a full-precision residual while per-channel decode tokens
    wait for `group` of them to share their channel scales."""

    def __init__(self, prefill: KVQuantArgs, decode: KVQuantArgs, group: int) -> None:
        self.prefill, self.decode, self.group = prefill, decode, group
        self.chunks: list[QuantizedKV] = []
        self.residual: torch.Tensor | None = None  # [b, h, r, d] with r < group between updates

    def add(self, x: torch.Tensor, prefill: bool) -> torch.Tensor:
        """Store new tokens x [b, h, s, d]; return the whole sequence [b, h, total, d] as attention reads it.

        Residual tokens are returned before a full group of them is quantized, as transformers' QuantizedLayer
        does: a token attends to the residual in full precision, as it would decoding one token per step.
        """
        if prefill or not self.decode.per_channel:
            self._store(x, self.prefill if prefill else self.decode)
            return self._sequence(x.dtype)
        self.residual = x if self.residual is None else torch.cat([self.residual, x], dim=-2)
        sequence = self._sequence(x.dtype)
        while self.residual.shape[-2] >= self.group:
            self.chunks.append(quantize_kv(self.residual[..., : self.group, :], self.decode))
            self.residual = self.residual[..., self.group :, :]
        return sequence

    def _store(self, x: torch.Tensor, args: KVQuantArgs) -> None:
        """Per channel: chunks of `group` tokens (the last may be shorter). Per token: one chunk, appended to the
        previous one when its args are the same."""
        if args.per_channel:
            self.chunks.extend(quantize_kv(part, args) for part in x.split(self.group, dim=-2))
            return
        chunk = quantize_kv(x, args)
        if self.chunks and self.chunks[-1].args == args:
            chunk = _concat_tokens(self.chunks.pop(), chunk)
        self.chunks.append(chunk)

    def _sequence(self, dtype: torch.dtype) -> torch.Tensor:
        parts = [chunk.dequantize(dtype) for chunk in self.chunks]
        if self.residual is not None:
            parts.append(self.residual)
        return torch.cat(parts, dim=-2)  # [b, h, total, d]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.chunks = [chunk.map(fn) for chunk in self.chunks]
        if self.residual is not None:
            self.residual = fn(self.residual)

    @property
    def quantized_bytes(self) -> int:
        return sum(chunk.nbytes for chunk in self.chunks)

    @property
    def residual_bytes(self) -> int:
        return 0 if self.residual is None else self.residual.numel() * self.residual.element_size()


class QuantizedKVLayer(DynamicLayer):
    """One layer's quantized KV cache: the first update (the prefill) is quantized with the prefill args, later
    tokens with the decode args; `update` returns the dequantized K and V for attention."""

    is_croppable = False

    def __init__(self, prefill: KVArgs, decode: KVArgs, residual_length: int = RESIDUAL_LENGTH) -> None:
        super().__init__()
        self.prefill, self.decode, self.residual_length = prefill, decode, residual_length
        self.cumulative_length = 0
        self._new_streams()

    def _new_streams(self) -> None:
        self.key_stream = _KVStream(self.prefill.keys, self.decode.keys, self.residual_length)
        self.value_stream = _KVStream(self.prefill.values, self.decode.values, self.residual_length)

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor | None = None) -> None:
        self.device = key_states.device
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new K and V [b, h, s, d]; return all of this layer's K and V [b, h, total, d]."""
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        prefill = self.cumulative_length == 0
        keys = self.key_stream.add(key_states, prefill)
        values = self.value_stream.add(value_states, prefill)
        self.cumulative_length += key_states.shape[-2]
        return keys, values

    def get_seq_length(self) -> int:
        return self.cumulative_length

    def reset(self) -> None:
        self.cumulative_length = 0
        self.is_initialized = False
        self._new_streams()

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove != 0:
            raise ValueError("a quantized KV cache cannot drop tokens: their chunks share scales")

    def _map_batch(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.key_stream.map(fn)
        self.value_stream.map(fn)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._map_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._map_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._map_batch(lambda t: t[indices, ...])

    @property
    def quantized_bytes(self) -> int:
        return self.key_stream.quantized_bytes + self.value_stream.quantized_bytes

    @property
    def residual_bytes(self) -> int:
        return self.key_stream.residual_bytes + self.value_stream.residual_bytes


def _kv_shape(config: PretrainedConfig) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of a decoder config."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, getattr(config, "num_key_value_heads", None) or heads, head_dim


class QuantizedKVCache(Cache):
    """A transformers Cache whose layers store K and V quantized: `model.generate(..., past_key_values=cache)`
    (`cache=` on transformers that renamed it, see `cache_kwarg`) or model forward calls.

    `decode` defaults to the prefill args; one KVQuantArgs means the same args for keys and values. Per-channel
    decode tokens stay in full precision until `residual_length` of them form a chunk (KIVI's residual).
    """

    def __init__(
        self,
        config: PretrainedConfig,
        prefill: KVArgs | KVQuantArgs,
        decode: KVArgs | KVQuantArgs | None = None,
        residual_length: int = RESIDUAL_LENGTH,
    ) -> None:
        if residual_length < 1:
            raise ValueError(f"residual_length must be >= 1, got {residual_length}")
        text_config = config.get_text_config(decoder=True)
        layer_types = getattr(text_config, "layer_types", None) or []
        if set(layer_types) - {"full_attention"}:
            raise ValueError(f"QuantizedKVCache supports full-attention layers only, got {sorted(set(layer_types))}")
        self.prefill_args = _as_kv_args(prefill)
        self.decode_args = _as_kv_args(decode if decode is not None else prefill)
        self.residual_length = residual_length
        self.num_layers, self.num_kv_heads, self.head_dim = _kv_shape(text_config)
        layers = [
            QuantizedKVLayer(self.prefill_args, self.decode_args, residual_length) for _ in range(self.num_layers)
        ]
        super().__init__(layers=layers)

    def memory_report(self) -> dict[str, float]:
        """Bytes held by quantized chunks and full-precision residuals over all layers, and per token of one
        sequence (all layers, K and V) beside the same cache in fp16."""
        tokens = self.get_seq_length()
        chunks = [chunk for layer in self.layers for chunk in layer.key_stream.chunks]
        batch = chunks[0].codes.shape[0] if chunks else 0
        quantized = sum(layer.quantized_bytes for layer in self.layers)
        residual = sum(layer.residual_bytes for layer in self.layers)
        fp16_per_token = 2 * self.num_layers * self.num_kv_heads * self.head_dim * 2  # K and V, 2 bytes each
        per_token = (quantized + residual) / (batch * tokens) if tokens and batch else 0.0
        return {
            "tokens": tokens,
            "batch_size": batch,
            "quantized_bytes": quantized,
            "residual_bytes": residual,
            "total_bytes": quantized + residual,
            "bytes_per_token": per_token,
            "fp16_bytes_per_token": fp16_per_token,
            "ratio_to_fp16": per_token / fp16_per_token,
        }


_SCHEMA_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def kv_cache_schema(
    model_config: PretrainedConfig, args: KVArgs | KVQuantArgs, block_size: int = RESIDUAL_LENGTH
) -> KVCacheSchema:
    """The KVCacheSchema of QuantizedKVCache's storage with these args: a page of `block_size` tokens costs what
    quantize_kv stores for K and V of those tokens (per-channel chunks are `residual_length` tokens, so pass it).

    16 bits is stored unchanged, in the model's dtype. The schema has one precision for K and V.
    """
    keys, values = _as_kv_args(args)
    if (keys.bits, keys.type, keys.symmetric) != (values.bits, values.type, values.symmetric):
        raise ValueError(f"KVCacheSchema has one precision for K and V, got keys {keys} and values {values}")
    granularity = {("token", "token"): "per_token", ("channel", "channel"): "per_channel", ("channel", "token"): "kivi"}
    scheme = granularity.get((keys.granularity, values.granularity))
    if scheme is None:
        raise ValueError("KVCacheSchema has no layout for per-token keys with per-channel values")
    if keys.is_fp8:
        dtype = "fp8_e4m3"
    elif keys.quantizes:
        dtype = f"int{keys.bits}"
    else:
        model_dtype = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
        model_dtype = getattr(torch, model_dtype) if isinstance(model_dtype, str) else model_dtype
        dtype = _SCHEMA_DTYPES.get(model_dtype, "fp16")
    num_layers, num_kv_heads, head_dim = _kv_shape(model_config.get_text_config(decoder=True))
    return KVCacheSchema(
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        block_size=block_size,
        dtype=dtype,
        scale_dtype=_SCHEMA_DTYPES[SCALE_DTYPE],
        scale_granularity=scheme,
        has_zero_point=not keys.symmetric,
        layout="contiguous",
    )


def cache_kwarg(model: PreTrainedModel) -> str:
    """The keyword the model's forward and generate take a Cache by: "cache" on transformers that renamed it,
    else "past_key_values"."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class KVPerplexityResult(PerplexityResult):
    """Perplexity of the second half of each window, the first `prefix_len` tokens prefilled into the cache;
    `memory` is the cache's memory_report after the last batch (prefix + second half, less the last token)."""

    prefix_len: int
    memory: dict[str, float]


def evaluate_kv_perplexity(
    model: PreTrainedModel,
    windows: torch.Tensor,
    prefill_args: KVArgs | KVQuantArgs,
    decode_args: KVArgs | KVQuantArgs,
    *,
    decode_chunk: int = 16,
    residual_length: int = RESIDUAL_LENGTH,
    batch_size: int = 4,
    progress: bool = False,
) -> KVPerplexityResult:
    """Perplexity over the second halves of `windows` [n, seq_len] with attention reading quantized K and V.

    Per window: the first half (p = seq_len // 2 tokens) is one prefill forward into a QuantizedKVCache; the
    second half is fed `decode_chunk` tokens per forward, each chunk's K/V quantized with the decode args before
    any later chunk reads them. NLL = -(1/N) sum over t >= p of log p(x_t | x_<t), N = n * (seq_len - p).
    Per-token args give the same K/V as decoding one token per step; per-channel ones too when decode_chunk
    divides residual_length. Bits 16 in both phases is the full-precision reference by the same procedure.
    """
    if windows.ndim != 2 or windows.shape[0] == 0 or windows.shape[1] < 4:
        raise ValueError(f"windows must be [n >= 1, seq_len >= 4] token ids, got shape {tuple(windows.shape)}")
    if decode_chunk < 1:
        raise ValueError(f"decode_chunk must be >= 1, got {decode_chunk}")
    device = next(model.parameters()).device
    num_windows, seq_len = windows.shape
    prefix = seq_len // 2
    kwarg = cache_kwarg(model)
    total_nll = 0.0
    memory: dict[str, float] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for first in tqdm(
            range(0, num_windows, batch_size), disable=not progress, file=sys.stderr, unit="batch", desc="kv ppl"
        ):
            batch = windows[first : first + batch_size].to(device)  # [b, seq_len]
            cache = QuantizedKVCache(model.config, prefill_args, decode_args, residual_length)
            # the prefill's last position predicts x_p; only that logit is needed
            logits = model(input_ids=batch[:, :prefix], use_cache=True, logits_to_keep=1, **{kwarg: cache}).logits
            predicted = [logits[:, -1:].float()]  # [b, 1, vocab] each
            for begin in range(prefix, seq_len - 1, decode_chunk):
                end = min(begin + decode_chunk, seq_len - 1)
                step = model(input_ids=batch[:, begin:end], use_cache=True, **{kwarg: cache}).logits
                predicted.append(step.float())  # [b, end - begin, vocab]
            logits = torch.cat(predicted, dim=1)  # [b, seq_len - prefix, vocab]: position t - 1 predicts x_t
            targets = batch[:, prefix:]  # [b, seq_len - prefix]
            total_nll += F.cross_entropy(logits.flatten(0, 1), targets.reshape(-1), reduction="sum").item()
            memory = cache.memory_report()
    num_tokens = num_windows * (seq_len - prefix)
    nll = total_nll / num_tokens
    return KVPerplexityResult(
        perplexity=math.exp(nll),
        nll=nll,
        num_tokens=num_tokens,
        num_windows=num_windows,
        seq_len=seq_len,
        seconds=time.perf_counter() - start,
        prefix_len=prefix,
        memory=memory,
    )
