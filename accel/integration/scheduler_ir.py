"""scheduler_ir: execution plans that carry accel's tags, a router that places requests on engine instances by those
tags and by capability, and structured scheduling logs (JSON lines) that record the tags with every decision.

- AccelTags: what an engine instance runs with, or what a request pins: weight / activation bits, quantization
  method, KV precision (a kv_runtime precision name: 'fp16', 'int8', 'int4-kivi', ...), sparsity, speculation,
  CoT. `labels()` is the flat form logs and metrics carry ({'quant': 'w4a16', 'kv': 'int4-kivi', ...}).
- EngineInstance: an engine (accel's runtime, LMDeploy, vLLM) with its tags, its device's CapabilityDescriptor, the
  KV shape of its model and the KV bytes it has for sequences.
- TagRouter.route(request) -> ExecutionPlan. An instance is a candidate when the request's pinned tags equal its
  tags, the request's requirements (KV bits range, speculation, weight bits, sparsity, engines) hold, its device
  can run its tags (schema.profile_support), the context fits max_context, and the KV the request needs,
      kv_bytes = (prompt_tokens + max_new_tokens) * bytes_per_token(instance KV precision),
  fits beside what its running plans reserved. Among candidates, a long context (>= policy.long_context_tokens)
  goes where a token costs the fewest KV bytes (an int4-KV instance), a short one where KV precision is highest
  (quality); ties go to the least loaded. `complete(plan)` releases the reservation.
- SchedulingLog: one JSON object a line per event (route / reject / complete), each with the tags' labels, so a
  scheduler's log says which acceleration every request ran with; read_scheduling_log validates a file back.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from accel.errors import AccelError
from accel.integration.kv_runtime.types import KVPrecision
from accel.schema import AccelConfig, CapabilityDescriptor, QuantizationProfile, profile_support
from accel.schema.base import AccelModel
from accel.schema.quantization import ActivationBits, NumberType, WeightBits, check_sparsity_pattern

__all__ = [
    "AccelTags",
    "EngineInstance",
    "ExecutionPlan",
    "NoRouteError",
    "RequestSpec",
    "RoutingPolicy",
    "SchedulingEvent",
    "SchedulingLog",
    "TagRequirements",
    "TagRouter",
    "read_scheduling_log",
]


class NoRouteError(AccelError):
    """No engine instance can take a request; the message lists each instance and why not."""


class AccelTags(AccelModel):
    """The acceleration an engine instance runs with (or a request pins), in the profile's words."""

    weight_bits: WeightBits = 16
    weight_type: NumberType = "int"
    activation_bits: ActivationBits = 16
    quant_method: str = "none"
    kv_precision: str = "fp16"
    sparsity_pattern: str = "none"
    sparsity_ratio: float = Field(default=0.0, ge=0.0, lt=1.0)
    speculation: str | None = None
    num_speculative_tokens: int = Field(default=0, ge=0)
    cot_mode: str | None = None

    @field_validator("kv_precision")
    @classmethod
    def _kv(cls, value: str) -> str:
        return KVPrecision.from_name(value).name

    @field_validator("sparsity_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        return check_sparsity_pattern(value)

    @model_validator(mode="after")
    def _method_for_bits(self) -> AccelTags:
        if self.weight_bits < 16 and self.quant_method == "none":
            raise ValueError(f"weight_bits {self.weight_bits} needs quant_method (e.g. 'rtn', 'gptq', 'awq')")
        return self

    @classmethod
    def from_config(cls, config: AccelConfig, kv_full_precision: str = "fp16") -> AccelTags:
        """The tags of an AccelConfig: its profile's bits and method, decode KV precision (kv_bits_decode,
        kv_type, kv_strategy; 16 bits is `kv_full_precision`), sparsity, speculation and CoT mode."""
        q = config.quantization
        if q.kv_bits_decode == 16:
            kv = kv_full_precision
        elif q.kv_type == "float":
            kv = "fp8_e4m3"
        else:
            kv = f"int{q.kv_bits_decode}" + {"token": "", "channel": "-channel", "kivi": "-kivi"}[q.kv_strategy]
        sparsity = config.sparsity
        spec = config.speculative if config.speculative is not None and config.speculative.enabled else None
        return cls(
            weight_bits=q.weight_bits,
            weight_type=q.weight_type,
            activation_bits=q.activation_bits,
            quant_method=q.method,
            kv_precision=kv,
            sparsity_pattern=sparsity.pattern if sparsity is not None else q.sparsity_pattern,
            sparsity_ratio=sparsity.ratio if sparsity is not None else q.sparsity_ratio,
            speculation=None if spec is None else spec.strategy,
            num_speculative_tokens=0 if spec is None else spec.num_speculative_tokens,
            cot_mode=None if config.cot_accel is None else "+".join(config.cot_accel.mode),
        )

    @property
    def kv(self) -> KVPrecision:
        return KVPrecision.from_name(self.kv_precision)

    @property
    def kv_bits(self) -> int:
        return self.kv.bits

    def profile(self) -> QuantizationProfile:
        """The QuantizationProfile these tags imply, for checking them against a device's capability."""
        kv = self.kv
        kv_bits = min(kv.bits, 16)
        return QuantizationProfile(
            weight_bits=self.weight_bits,
            weight_type=self.weight_type,
            activation_bits=self.activation_bits,
            activation_type="float" if self.weight_type == "float" and self.activation_bits == 8 else "int",
            kv_bits_prefill=kv_bits,
            kv_bits_decode=kv_bits,
            kv_type="float" if kv.dtype.startswith("fp8") else "int",
            method=self.quant_method if self.weight_bits < 16 else "none",
            sparsity_pattern=self.sparsity_pattern,
            sparsity_ratio=self.sparsity_ratio,
        )

    def labels(self) -> dict[str, str]:
        """Flat string labels: quant, kv, sparsity, spec, cot (what a log line or a metric carries)."""
        quant = f"w{self.weight_bits}a{self.activation_bits}" + ("-fp8" if self.weight_type == "float" else "")
        if self.quant_method != "none":
            quant += f"-{self.quant_method}"
        return {
            "quant": quant,
            "kv": self.kv_precision,
            "sparsity": self.sparsity_pattern if self.sparsity_pattern != "none" else "dense",
            "spec": f"{self.speculation}/{self.num_speculative_tokens}" if self.speculation else "off",
            "cot": self.cot_mode or "off",
        }


class TagRequirements(AccelModel):
    """Ranges a request accepts: KV bits (min_kv_bits 8 keeps it off int4 KV), speculation required (True) or
    refused (False), a weight-bits floor, whether sparse weights are acceptable, and which engines."""

    min_kv_bits: int | None = Field(default=None, gt=0)
    max_kv_bits: int | None = Field(default=None, gt=0)
    speculation: bool | None = None
    min_weight_bits: int | None = Field(default=None, gt=0)
    allow_sparsity: bool = True
    engines: list[str] | None = None

    def violations(self, tags: AccelTags, engine: str) -> list[str]:
        reasons = []
        if self.min_kv_bits is not None and tags.kv_bits < self.min_kv_bits:
            reasons.append(f"KV {tags.kv_precision} has {tags.kv_bits} bits, the request needs >= {self.min_kv_bits}")
        if self.max_kv_bits is not None and tags.kv_bits > self.max_kv_bits:
            reasons.append(f"KV {tags.kv_precision} has {tags.kv_bits} bits, the request needs <= {self.max_kv_bits}")
        if self.speculation is True and not tags.speculation:
            reasons.append("the request needs speculative decoding, the instance has none")
        if self.speculation is False and tags.speculation:
            reasons.append(f"the request refuses speculative decoding, the instance runs {tags.speculation}")
        if self.min_weight_bits is not None and tags.weight_bits < self.min_weight_bits:
            reasons.append(f"weights are {tags.weight_bits}-bit, the request needs >= {self.min_weight_bits}")
        if not self.allow_sparsity and tags.sparsity_pattern != "none":
            reasons.append(f"the request refuses sparse weights, the instance runs {tags.sparsity_pattern}")
        if self.engines is not None and engine not in self.engines:
            reasons.append(f"engine {engine!r} is not one of the request's {self.engines}")
        return reasons


class RequestSpec(AccelModel):
    """One request to place. `tags`, when set, pins the exact acceleration it must run with."""

    request_id: str = Field(min_length=1)
    prompt_tokens: int = Field(gt=0)
    max_new_tokens: int = Field(gt=0)
    tags: AccelTags | None = None
    requirements: TagRequirements = Field(default_factory=TagRequirements)
    tenant_id: str | None = None

    @property
    def context_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


class EngineInstance(AccelModel):
    """An engine instance the router can place requests on; kv_capacity_bytes is the KV memory it gives
    sequences, max_batch how many it runs at once."""

    instance_id: str = Field(min_length=1)
    engine: str = "accel"
    tags: AccelTags
    capability: CapabilityDescriptor
    num_layers: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    block_size: int = Field(default=16, gt=0)
    kv_capacity_bytes: int = Field(gt=0)
    max_context: int = Field(gt=0)
    max_batch: int | None = Field(default=None, gt=0)

    @property
    def kv_bytes_per_token(self) -> float:
        """K and V of one token over all layers at the instance's KV precision (KVCacheSchema.bytes_per_token)."""
        schema = self.tags.kv.page_schema(self.num_layers, self.num_kv_heads, self.head_dim, self.block_size)
        return schema.bytes_per_token


class ExecutionPlan(AccelModel):
    """Where a request runs and with what: the instance, its accel tags, the KV precision and the KV bytes
    reserved for the request's context, and why this instance was chosen."""

    plan_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:12])
    request_id: str
    instance_id: str
    engine: str
    tags: AccelTags
    context_tokens: int
    kv_bytes: int
    reason: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))

    @property
    def kv_precision(self) -> KVPrecision:
        return self.tags.kv

    def labels(self) -> dict[str, str]:
        return {**self.tags.labels(), "instance": self.instance_id, "engine": self.engine}


class RoutingPolicy(AccelModel):
    """long_context_tokens: a context at least this long goes to the candidate with the fewest KV bytes per token;
    shorter ones go to the highest KV precision."""

    long_context_tokens: int = Field(default=8192, gt=0)


class SchedulingEvent(AccelModel):
    """One line of a scheduling log."""

    ts: datetime
    event: Literal["route", "reject", "complete"]
    request_id: str
    instance_id: str | None = None
    plan_id: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    context_tokens: int | None = None
    kv_bytes: int | None = None
    reason: str = ""
    details: dict[str, Any] = Field(default_factory=dict)


class SchedulingLog:
    """Appends SchedulingEvents to a JSON-lines file, one flushed line each (a crash keeps what was written)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, event: SchedulingEvent) -> None:
        self._file.write(event.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> SchedulingLog:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def read_scheduling_log(path: Path | str) -> list[SchedulingEvent]:
    """Every event of a scheduling log, validated; a bad line is an error naming the file and line."""
    events = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        try:
            events.append(SchedulingEvent.model_validate(json.loads(line)))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ValueError(f"{path}:{number}: not a scheduling event: {exc}") from None
    return events


class TagRouter:
    """Places requests on engine instances by tags and capability (module docstring), logging every decision."""

    def __init__(
        self, instances: list[EngineInstance], policy: RoutingPolicy | None = None, log: SchedulingLog | None = None
    ) -> None:
        if not instances:
            raise ValueError("instances is empty; give the router at least one EngineInstance")
        ids = [instance.instance_id for instance in instances]
        if len(set(ids)) != len(ids):
            raise ValueError(f"instance_id must be unique, got {ids}")
        self.instances = {instance.instance_id: instance for instance in instances}
        self.policy = policy or RoutingPolicy()
        self.log = log
        self._active: dict[str, dict[str, ExecutionPlan]] = {i: {} for i in ids}

    def reserved_bytes(self, instance_id: str) -> int:
        return sum(plan.kv_bytes for plan in self._active[instance_id].values())

    def active(self, instance_id: str) -> list[ExecutionPlan]:
        return list(self._active[instance_id].values())

    def _rejections(self, request: RequestSpec, instance: EngineInstance) -> list[str]:
        reasons = []
        if request.tags is not None and request.tags != instance.tags:
            reasons.append(f"the request pins tags {request.tags.labels()}, the instance runs {instance.tags.labels()}")
        reasons += request.requirements.violations(instance.tags, instance.engine)
        reasons += profile_support(instance.tags.profile(), instance.capability)
        limit = min(instance.max_context, instance.capability.max_sequence_length or instance.max_context)
        if request.context_tokens > limit:
            reasons.append(f"context {request.context_tokens} tokens > the instance's {limit}")
        need = request.context_tokens * instance.kv_bytes_per_token
        free = instance.kv_capacity_bytes - self.reserved_bytes(instance.instance_id)
        if need > free:
            reasons.append(f"KV needs {need:.0f} bytes at {instance.tags.kv_precision}, {free} are free")
        if instance.max_batch is not None and len(self._active[instance.instance_id]) >= instance.max_batch:
            reasons.append(f"the instance runs max_batch {instance.max_batch} requests already")
        return reasons

    def route(self, request: RequestSpec) -> ExecutionPlan:
        """The plan for `request` on the best candidate instance; NoRouteError when there is none."""
        if request.request_id in {p for plans in self._active.values() for p in plans}:
            raise ValueError(f"request_id {request.request_id!r} is already running; complete its plan first")
        rejected = {i: self._rejections(request, inst) for i, inst in self.instances.items()}
        candidates = [self.instances[i] for i, reasons in rejected.items() if not reasons]
        if not candidates:
            message = "; ".join(f"{i}: {', '.join(reasons)}" for i, reasons in rejected.items())
            self._write("reject", request, None, reason=message, details={"rejected": rejected})
            raise NoRouteError(f"no instance can take request {request.request_id!r}: {message}")
        long_context = request.context_tokens >= self.policy.long_context_tokens

        def load(instance: EngineInstance) -> float:
            return self.reserved_bytes(instance.instance_id) / instance.kv_capacity_bytes

        if long_context:  # fewest KV bytes per token first (int4 KV), then least loaded
            chosen = min(candidates, key=lambda inst: (inst.kv_bytes_per_token, load(inst), inst.instance_id))
            why = (f"long context ({request.context_tokens} >= {self.policy.long_context_tokens} tokens): fewest KV "
                   f"bytes per token ({chosen.kv_bytes_per_token:.0f}, {chosen.tags.kv_precision})")
        else:  # highest KV precision first (quality), then least loaded
            chosen = min(candidates, key=lambda inst: (-inst.kv_bytes_per_token, load(inst), inst.instance_id))
            why = (f"short context ({request.context_tokens} < {self.policy.long_context_tokens} tokens): highest KV "
                   f"precision ({chosen.tags.kv_precision})")
        plan = ExecutionPlan(
            request_id=request.request_id,
            instance_id=chosen.instance_id,
            engine=chosen.engine,
            tags=chosen.tags,
            context_tokens=request.context_tokens,
            kv_bytes=int(request.context_tokens * chosen.kv_bytes_per_token),
            reason=f"{why}; {len(candidates)} of {len(self.instances)} instances qualified",
        )
        self._active[chosen.instance_id][request.request_id] = plan
        self._write("route", request, plan, reason=plan.reason, details={
            "candidates": [inst.instance_id for inst in candidates],
            "rejected": {i: r for i, r in rejected.items() if r},
            "reserved_bytes": self.reserved_bytes(chosen.instance_id),
        })
        return plan

    def complete(self, plan: ExecutionPlan, **details: Any) -> None:
        """Release a finished plan's KV reservation (details, e.g. tokens generated, go to the log)."""
        if self._active.get(plan.instance_id, {}).pop(plan.request_id, None) is None:
            raise ValueError(f"plan {plan.plan_id} (request {plan.request_id!r}) is not running on {plan.instance_id}")
        self._write("complete", None, plan, reason="finished", details=details, request_id=plan.request_id)

    def _write(
        self,
        event: Literal["route", "reject", "complete"],
        request: RequestSpec | None,
        plan: ExecutionPlan | None,
        *,
        reason: str,
        details: dict[str, Any],
        request_id: str | None = None,
    ) -> None:
        if self.log is None:
            return
        self.log.write(SchedulingEvent(
            ts=datetime.now(timezone.utc),
            event=event,
            request_id=request_id or (request.request_id if request is not None else ""),
            instance_id=None if plan is None else plan.instance_id,
            plan_id=None if plan is None else plan.plan_id,
            tags=plan.labels() if plan is not None else (request.tags.labels() if request and request.tags else {}),
            context_tokens=plan.context_tokens if plan is not None else (request.context_tokens if request else None),
            kv_bytes=None if plan is None else plan.kv_bytes,
            reason=reason,
            details=details,
        ))
