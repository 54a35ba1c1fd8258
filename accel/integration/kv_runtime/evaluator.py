"""KVPrecisionEvaluator: which KV precision pays for a model, a context length and a device.

It weighs the bytes a precision saves against its measured quality loss and its measured attention/dequantization
cost. Nothing in it is assumed: quality and cost come from tables the benchmarks write (bench/kv_runtime.py on the
bundled model and this CPU; bench/kernels_attention.py on a GPU), and bytes are exact storage sizes.

For each candidate KV format f (a kv_runtime precision such as 'int8' or 'int4-kivi', or a static runtime format
'static-int8', ...) with measured quality and a measured cost on the device:

    bytes_per_token(f) = K and V of one token over all layers, scales and zero points included
    kv_budget          = memory_fraction * available memory - weight_bytes
    sequences(f)       = min(batch_size, floor(kv_budget / (context_len * bytes_per_token(f))))
    step_time(f)       = weight_bytes / copy_bandwidth                                   (weights read once a step)
                         + sequences(f) * context_len * bytes_per_token(f) / attention_rate(f)
    tokens_per_s(f)    = sequences(f) / step_time(f)                                    (decode, one token a row)

attention_rate(f) is the measured rate (GB/s of stored cache) at which decode attention reads format f, its
dequantization included, taken at the measured (batch, context) point nearest the workload's total tokens; a format
that costs more to dequantize shows as a lower rate (dequant_slowdown = rate(full precision) / rate(f), per byte).
quality_loss(f) is the measured perplexity increase (%) of the bundled model with that KV.

Choice: among formats with quality_loss <= max_quality_loss_pct that fit at least one sequence, the highest
tokens_per_s; a format within `tie_tolerance` of it that loses less quality wins instead.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from accel.integration.kv_runtime.types import KVPrecision
from accel.runtime.kv_ops import kv_token_bytes
from accel.schema import CapabilityDescriptor
from accel.schema.base import AccelModel
from accel.schema.capability import DeviceType

if TYPE_CHECKING:
    from accel.runtime.model import DecoderModel

__all__ = [
    "KVCostPoint",
    "KVCostTable",
    "KVDecision",
    "KVFormatQuality",
    "KVMeasurements",
    "KVOption",
    "KVPrecisionEvaluator",
    "KVWorkload",
    "kv_bytes_per_token",
]

STATIC_PREFIX = "static-"
# bench/kernels_attention.py's formats: accel-cuda's decode kernel over the static runtime cache formats.
_GPU_KERNEL_FORMATS = {"none": "static-none", "int8": "static-int8", "fp8": "static-fp8", "int4": "static-int4"}


class KVFormatQuality(AccelModel):
    """Measured quality of one KV format on a model: perplexity increase over the full-precision cache (%),
    relative logits error ||l - l_ref|| / ||l_ref||, and top-1 agreement with the full-precision cache."""

    name: str
    perplexity_delta_pct: float
    logits_rel_error: float = Field(ge=0)
    top1_agreement: float = Field(ge=0, le=1)


class KVCostPoint(AccelModel):
    """Measured decode-attention rates at one (batch, context): GB/s of stored K/V read, per format name."""

    batch: int = Field(gt=0)
    context: int = Field(gt=0)
    gbps: dict[str, float]


class KVCostTable(AccelModel):
    """Attention costs measured on one device, with its measured copy bandwidth (the weight-read roofline)."""

    device: str
    device_type: DeviceType
    copy_bandwidth_gbps: float = Field(gt=0)
    source: str
    points: list[KVCostPoint] = Field(min_length=1)

    def nearest(self, batch: int, context: int) -> KVCostPoint:
        """The point whose total tokens (batch * context) are nearest the workload's, in log scale."""
        tokens = math.log(batch * context)
        return min(self.points, key=lambda p: (abs(math.log(p.batch * p.context) - tokens), -p.context))


class KVMeasurements(AccelModel):
    """Everything the evaluator knows: quality per format on one model at one context, and cost tables."""

    model: str
    quality_context_len: int = Field(gt=0)
    quality: list[KVFormatQuality] = Field(min_length=1)
    cost_tables: list[KVCostTable] = Field(min_length=1)

    @classmethod
    def from_results(cls, kv_runtime: Path | str, kernels_attention: Path | str | None = None) -> KVMeasurements:
        """Read bench/results/kv_runtime.json (quality on the bundled model, CPU costs) and, when given,
        bench/results/kernels_attention.json (GPU decode-attention rates of the static formats)."""
        data = _read_json(Path(kv_runtime), "bench/kv_runtime.py")
        try:
            quality = [
                KVFormatQuality(
                    name=row["name"],
                    perplexity_delta_pct=row["perplexity_delta_pct"],
                    logits_rel_error=row["logits_rel_error"],
                    top1_agreement=row["top1_agreement"],
                )
                for row in data["quality"]["rows"]
                if row["kind"] in ("paged", "static")  # not the 'pressure' policy row: it is no single format
            ]
            tables = [KVCostTable.model_validate(data["cpu_cost"]["table"])]
            model, context = data["quality"]["meta"]["model"], data["quality"]["meta"]["seq_len"]
        except KeyError as exc:
            raise ValueError(f"{kv_runtime}: no {exc} section; rewrite it with bench/kv_runtime.py") from None
        if kernels_attention is not None:
            tables.append(_gpu_table(Path(kernels_attention)))
        return cls(model=model, quality_context_len=context, quality=quality, cost_tables=tables)

    def table_for(self, hardware: CapabilityDescriptor) -> KVCostTable:
        for table in self.cost_tables:
            if table.device_type == hardware.device_type:
                return table
        raise ValueError(
            f"no measured attention cost for device_type {hardware.device_type!r} ({hardware.device_name}); run "
            "bench/kv_runtime.py (CPU) or bench/kernels_attention.py (CUDA) there and load its results"
        )


def _read_json(path: Path, writer: str) -> dict[str, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: no such results file; run {writer} to measure it")
    return json.loads(path.read_text(encoding="utf-8"))


def _gpu_table(path: Path) -> KVCostTable:
    """kernels_attention.json: per (batch, context) row, <fmt>_GBps of accel-cuda's kernel per static format."""
    data = _read_json(path, "bench/kernels_attention.py on a GPU")
    points = [
        KVCostPoint(
            batch=row["batch"],
            context=row["context"],
            gbps={name: row[f"{fmt}_GBps"] for fmt, name in _GPU_KERNEL_FORMATS.items() if f"{fmt}_GBps" in row},
        )
        for row in data["rows"]
    ]
    meta = data["meta"]
    return KVCostTable(
        device=meta["device"],
        device_type="cuda",
        copy_bandwidth_gbps=1000 * meta["copy_bandwidth_tbps"],
        source=f"{path.name} ({meta['device']}, {meta['date']}; shape {meta.get('shape', '?')})",
        points=points,
    )


class KVWorkload(AccelModel):
    """A model's KV shape and weight bytes, served at `context_len` tokens for `batch_size` sequences."""

    model: str
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    weight_bytes: int = Field(ge=0)
    context_len: int = Field(gt=0)
    batch_size: int = Field(default=1, gt=0)
    block_size: int = Field(default=16, gt=0)

    @classmethod
    def from_model(cls, model: DecoderModel, name: str, context_len: int, batch_size: int = 1) -> KVWorkload:
        """The workload of a runtime model; weight bytes count each stored tensor once (tied ones too)."""
        seen: dict[int, int] = {}
        for tensor in model.state_dict().values():
            seen[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        args = model.args
        return cls(
            model=name,
            num_layers=args.num_layers,
            num_kv_heads=args.num_kv_heads,
            head_dim=args.head_dim,
            weight_bytes=sum(seen.values()),
            context_len=context_len,
            batch_size=batch_size,
        )


def kv_bytes_per_token(name: str, workload: KVWorkload) -> float:
    """K and V bytes of one token over all layers in format `name` (static formats: kv_ops.kv_token_bytes with
    a bf16 'none'; kv_runtime precisions: KVCacheSchema.bytes_per_token)."""
    if name.startswith(STATIC_PREFIX):
        per_head = kv_token_bytes(name.removeprefix(STATIC_PREFIX), workload.head_dim)
        return 2 * workload.num_layers * workload.num_kv_heads * per_head
    schema = KVPrecision.from_name(name).page_schema(
        workload.num_layers, workload.num_kv_heads, workload.head_dim, workload.block_size
    )
    return schema.bytes_per_token


class KVOption(AccelModel):
    """One format weighed for a workload (module docstring has the model); `reason` says why it is not
    admissible, when it is not."""

    name: str
    bytes_per_token: float
    bytes_saved_pct: float
    sequences: int
    step_time_s: float | None
    tokens_per_s: float | None
    quality_loss_pct: float | None
    top1_agreement: float | None
    attention_gbps: float | None
    dequant_slowdown: float | None
    admissible: bool
    reason: str = ""


class KVDecision(AccelModel):
    """The precision to use (None when no format is admissible), why, and every option weighed."""

    precision: str | None
    reason: str
    workload: KVWorkload
    hardware: str
    cost_source: str
    quality_source: str
    options: list[KVOption]


class KVPrecisionEvaluator:
    """Weighs KV formats for a workload on a device from measurements (module docstring)."""

    def __init__(
        self,
        measurements: KVMeasurements,
        *,
        max_quality_loss_pct: float = 1.0,
        memory_fraction: float = 0.9,
        tie_tolerance: float = 0.02,
    ) -> None:
        if not 0 < memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
        if max_quality_loss_pct < 0:
            raise ValueError(f"max_quality_loss_pct must be >= 0, got {max_quality_loss_pct}")
        self.measurements = measurements
        self.max_quality_loss_pct = max_quality_loss_pct
        self.memory_fraction = memory_fraction
        self.tie_tolerance = tie_tolerance

    def _full_precision(self, point: KVCostPoint) -> str | None:
        """The full-precision format of a cost point: the reference for bytes saved and dequant slowdown."""
        return next((name for name in ("static-none", "bf16", "fp16", "fp32") if name in point.gbps), None)

    def evaluate(self, workload: KVWorkload, hardware: CapabilityDescriptor) -> KVDecision:
        memory = hardware.available_memory_bytes or hardware.total_memory_bytes
        if memory <= 0:
            raise ValueError(f"hardware {hardware.device_name!r} reports no memory; set available_memory_bytes")
        table = self.measurements.table_for(hardware)
        point = table.nearest(workload.batch_size, workload.context_len)
        bandwidth = hardware.memory_bandwidth_gbps or table.copy_bandwidth_gbps
        budget = self.memory_fraction * memory - workload.weight_bytes
        if budget <= 0:
            raise ValueError(
                f"weights ({workload.weight_bytes} bytes) fill memory_fraction {self.memory_fraction:g} of the "
                f"device's {memory} bytes, leaving no KV memory; use a device with more memory or a smaller model"
            )
        quality = {q.name: q for q in self.measurements.quality}
        full = self._full_precision(point)
        full_bytes = kv_bytes_per_token(full, workload) if full else None
        options = [
            self._option(name, workload, point, quality.get(name), full, full_bytes, budget, bandwidth)
            for name in sorted(set(quality) | set(point.gbps))
        ]
        decision, reason = self._choose(options)
        return KVDecision(
            precision=decision,
            reason=reason,
            workload=workload,
            hardware=hardware.device_name,
            cost_source=f"{table.source}; point batch {point.batch} context {point.context}",
            quality_source=f"{self.measurements.model} at {self.measurements.quality_context_len} tokens",
            options=options,
        )

    def _option(
        self,
        name: str,
        workload: KVWorkload,
        point: KVCostPoint,
        quality: KVFormatQuality | None,
        full: str | None,
        full_bytes: float | None,
        budget: float,
        bandwidth: float,
    ) -> KVOption:
        per_token = kv_bytes_per_token(name, workload)
        fits = int(budget // (workload.context_len * per_token))
        sequences = min(workload.batch_size, fits)
        rate = point.gbps.get(name)
        step = tokens = None
        if rate is not None and sequences > 0:
            step = workload.weight_bytes / (bandwidth * 1e9) + sequences * workload.context_len * per_token / (
                rate * 1e9
            )
            tokens = sequences / step
        reasons = []
        if quality is None:
            reasons.append(f"no measured quality for {name}")
        elif quality.perplexity_delta_pct > self.max_quality_loss_pct:
            reasons.append(f"quality loss {quality.perplexity_delta_pct:.2f}% > {self.max_quality_loss_pct:g}%")
        if rate is None:
            reasons.append(f"no measured attention cost for {name} on this device")
        if sequences < 1:
            need = workload.context_len * per_token
            reasons.append(f"one sequence needs {need:.3g} bytes of KV, the budget is {budget:.3g}")
        slowdown = None if rate is None or full is None else point.gbps[full] / rate
        return KVOption(
            name=name,
            bytes_per_token=per_token,
            bytes_saved_pct=0.0 if full_bytes is None else 100 * (1 - per_token / full_bytes),
            sequences=max(sequences, 0),
            step_time_s=step,
            tokens_per_s=tokens,
            quality_loss_pct=None if quality is None else quality.perplexity_delta_pct,
            top1_agreement=None if quality is None else quality.top1_agreement,
            attention_gbps=rate,
            dequant_slowdown=slowdown,
            admissible=not reasons,
            reason="; ".join(reasons),
        )

    def _choose(self, options: list[KVOption]) -> tuple[str | None, str]:
        admissible = [o for o in options if o.admissible]
        if not admissible:
            return None, "no format is admissible: " + " | ".join(f"{o.name}: {o.reason}" for o in options)
        best = max(admissible, key=lambda o: o.tokens_per_s or 0.0)
        floor = (1 - self.tie_tolerance) * (best.tokens_per_s or 0.0)
        close = [o for o in admissible if (o.tokens_per_s or 0.0) >= floor]
        chosen = min(close, key=lambda o: (o.quality_loss_pct or 0.0, -(o.tokens_per_s or 0.0)))
        reason = (
            f"{chosen.name}: {chosen.tokens_per_s:.4g} tokens/s with {chosen.sequences} sequences, "
            f"{chosen.bytes_saved_pct:.0f}% fewer KV bytes than full precision, measured quality loss "
            f"{chosen.quality_loss_pct:.2f}% (<= {self.max_quality_loss_pct:g}%)"
        )
        if chosen is not best:
            reason += f"; {best.name} is within {100 * self.tie_tolerance:g}% in speed but loses more quality"
        return chosen.name, reason

