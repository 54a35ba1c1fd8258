"""scheduler_ir: tags from real presets, routing by tags and capability (long contexts to the int4-KV instance,
requirements, device support, KV memory, batch limits), scheduling logs as JSON lines on disk, and one end-to-end
path: route, generate through the chosen instance's paged KV store at its precision, complete, read the log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import LlamaConfig

from accel.integration.kv_runtime.paged_cache import PagedKVCache
from accel.integration.scheduler_ir import (
    AccelTags,
    EngineInstance,
    NoRouteError,
    RequestSpec,
    RoutingPolicy,
    SchedulingLog,
    TagRequirements,
    TagRouter,
    read_scheduling_log,
)
from accel.runtime.generate import Generator
from accel.runtime.model import random_model
from accel.schema import CapabilityDescriptor
from accel.tools.presets import get_preset

GPU = CapabilityDescriptor(
    device_name="test-gpu",
    device_type="cuda",
    supported_quant_formats=["w4a16", "w8a16", "kv-int8", "kv-int4", "kv-fp8"],
    supported_sparse_formats=["2:4"],
)
NO_INT4_KV = GPU.model_copy(update={"device_name": "old-gpu", "supported_quant_formats": ["w4a16", "kv-int8"]})
# Llama-3-8B's KV shape: 32 layers, 8 KV heads, head_dim 128
SHAPE = {"num_layers": 32, "num_kv_heads": 8, "head_dim": 128}
FP16_TOKEN = 2 * 32 * 8 * 128 * 2  # 131072 bytes of KV a token


def instance(instance_id: str, kv: str, tokens: int, **fields: object) -> EngineInstance:
    """An instance whose KV memory holds `tokens` tokens at fp16."""
    tags = fields.pop("tags", AccelTags(kv_precision=kv))
    return EngineInstance(instance_id=instance_id, tags=tags, capability=fields.pop("capability", GPU),
                          kv_capacity_bytes=tokens * FP16_TOKEN, max_context=131072, **SHAPE, **fields)


def request(request_id: str, prompt: int, new: int = 64, **fields: object) -> RequestSpec:
    return RequestSpec(request_id=request_id, prompt_tokens=prompt, max_new_tokens=new, **fields)


def test_tags_come_from_the_presets() -> None:
    tags = AccelTags.from_config(get_preset("w4a16-2:4"))
    assert tags.labels() == {"quant": "w4a16-gptq", "kv": "fp16", "sparsity": "2:4", "spec": "off", "cot": "off"}
    assert AccelTags.from_config(get_preset("kv4")).kv_precision == "int4-kivi"
    assert AccelTags.from_config(get_preset("w4a16-kv8")).labels()["kv"] == "int8"
    assert AccelTags.from_config(get_preset("spec-ngram")).labels()["spec"] == "ngram/4"
    assert AccelTags.from_config(get_preset("fp16"), kv_full_precision="bf16").kv_precision == "bf16"
    fp8 = AccelTags.from_config(get_preset("fp8"))
    assert fp8.labels()["quant"] == "w8a8-fp8-fp8" and fp8.profile().weight_type == "float"
    with pytest.raises(ValidationError, match="weight_bits 4 needs quant_method"):
        AccelTags(weight_bits=4)
    with pytest.raises(ValidationError, match="fp8_e5m2"):
        AccelTags(kv_precision="fp8_e5m2")


def test_router_places_by_context_tags_and_capability(tmp_path: Path) -> None:
    spec = AccelTags(weight_bits=4, quant_method="gptq", kv_precision="int8", speculation="ngram",
                     num_speculative_tokens=4)
    instances = [
        instance("fp16-kv", "fp16", 40_000),
        instance("int4-kv", "int4-kivi", 40_000),
        instance("w4-spec", "int8", 40_000, tags=spec),
        instance("old-int4", "int4", 40_000, capability=NO_INT4_KV),
    ]
    log_path = tmp_path / "logs" / "schedule.jsonl"
    with SchedulingLog(log_path) as log:
        router = TagRouter(instances, RoutingPolicy(long_context_tokens=8192), log)
        short = router.route(request("short", 500))
        assert short.instance_id == "fp16-kv" and "highest KV precision (fp16)" in short.reason
        # 64096 tokens: fp16 KV would need 8.4 GB, the instance has 5.2; int4 KIVI needs 3.3 GB
        long = router.route(request("long", 60_000, 4096))
        assert long.instance_id == "int4-kv" and "fewest KV bytes per token" in long.reason
        assert long.kv_bytes == int(64096 * long.tags.kv.page_schema(32, 8, 128, 16).bytes_per_token)
        assert long.kv_bytes < 0.4 * 64096 * FP16_TOKEN  # KIVI over 16-token blocks: 39% of fp16
        careful = router.route(request("careful", 20_000, requirements=TagRequirements(min_kv_bits=8)))
        assert careful.instance_id == "w4-spec"  # long, so the fewest bytes among KV >= 8 bits: int8
        spec_plan = router.route(request("spec", 100, requirements=TagRequirements(speculation=True)))
        assert spec_plan.instance_id == "w4-spec" and spec_plan.labels()["spec"] == "ngram/4"
        # pinned to int4 per-token KV: only old-int4 runs those tags, and its device has no int4 KV kernel
        with pytest.raises(NoRouteError, match="old-int4: old-gpu .cuda. has no kernel for kv-int4"):
            router.route(request("pinned", 100, tags=AccelTags(kv_precision="int4")))
        # KV memory: fill fp16-kv, a 16-bit-only request no longer fits, completing a plan makes room
        sixteen = TagRequirements(min_kv_bits=16)
        big = router.route(request("big", 39_000, 372, requirements=sixteen))
        assert big.instance_id == "fp16-kv" and router.reserved_bytes("fp16-kv") == (564 + 39_372) * FP16_TOKEN
        with pytest.raises(NoRouteError, match=r"fp16-kv: KV needs 73924608 bytes at fp16, 8388608 are free"):
            router.route(request("late", 500, requirements=sixteen))
        router.complete(short, generated_tokens=64)
        assert router.route(request("late", 500, requirements=sixteen)).instance_id == "fp16-kv"
        with pytest.raises(ValueError, match="request_id 'late' is already running"):
            router.route(request("late", 10))
        with pytest.raises(ValueError, match="is not running on fp16-kv"):
            router.complete(short)
    events = read_scheduling_log(log_path)
    assert [e.event for e in events] == ["route"] * 4 + ["reject", "route", "reject", "complete", "route"]
    for event in events:
        if event.event != "reject":
            assert set(event.tags) == {"quant", "kv", "sparsity", "spec", "cot", "instance", "engine"}
    routed = {e.request_id: e for e in events if e.event == "route"}
    assert routed["long"].tags["kv"] == "int4-kivi" and routed["long"].kv_bytes == long.kv_bytes
    assert routed["spec"].tags["quant"] == "w4a16-gptq" and routed["spec"].tags["spec"] == "ngram/4"
    assert set(routed["short"].details["rejected"]) == {"old-int4"}
    assert events[4].tags == {"quant": "w16a16", "kv": "int4", "sparsity": "dense", "spec": "off", "cot": "off"}
    assert "has no kernel for kv-int4" in events[4].details["rejected"]["old-int4"][0]
    assert events[7].details == {"generated_tokens": 64} and events[7].plan_id == short.plan_id
    lines = log_path.read_text().splitlines()
    assert len(lines) == len(events) and all(json.loads(line)["tags"] is not None for line in lines)


def test_batch_limit_context_limit_and_bad_input(tmp_path: Path) -> None:
    router = TagRouter([instance("one", "fp16", 10_000, max_batch=1)])
    router.route(request("a", 10))
    with pytest.raises(NoRouteError, match="runs max_batch 1 requests already"):
        router.route(request("b", 10))
    short_device = GPU.model_copy(update={"max_sequence_length": 4096})
    small = TagRouter([instance("small", "fp16", 10**6, capability=short_device)])
    with pytest.raises(NoRouteError, match="context 5000 tokens > the instance's 4096"):
        small.route(request("c", 4936))
    with pytest.raises(ValueError, match="instances is empty"):
        TagRouter([])
    with pytest.raises(ValueError, match="instance_id must be unique"):
        TagRouter([instance("x", "fp16", 10), instance("x", "int8", 10)])
    with pytest.raises(ValidationError, match="prompt_tokens"):
        RequestSpec(request_id="r", prompt_tokens=0, max_new_tokens=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ts": "2026-01-01T00:00:00Z", "event": "route", "request_id": "a"}\n{"event": "nope"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a scheduling event"):
        read_scheduling_log(bad)


def test_end_to_end_route_generate_complete(tmp_path: Path) -> None:
    """Two instances of a tiny model, one keeping KV in fp32, one in int4: a short request runs on the first, a
    long one on the second, each through its own paged store at the plan's KV precision; the log has both."""
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    runtime = random_model(config, dtype=torch.float32, seed=3)
    shape = {"num_layers": 2, "num_kv_heads": 2, "head_dim": 32}
    cpu = CapabilityDescriptor(device_name="cpu", device_type="cpu", supported_quant_formats=["kv-int4", "kv-int8"])
    engines = {}
    instances = []
    for name, kv in (("full", "fp32"), ("compact", "int4")):
        tags = AccelTags(kv_precision=kv)
        cache = PagedKVCache.for_model(runtime, 1, 320, precision=tags.kv)
        capacity = cache.store.config.pools[next(iter(cache.store.config.pools))].capacity_bytes
        instances.append(EngineInstance(instance_id=name, tags=tags, capability=cpu, kv_capacity_bytes=capacity,
                                        max_context=320, **shape))
        engines[name] = Generator(runtime, cache=cache)
    log_path = tmp_path / "schedule.jsonl"
    with SchedulingLog(log_path) as log:
        router = TagRouter(instances, RoutingPolicy(long_context_tokens=128), log)
        for request_id, prompt_len in (("short", 20), ("long", 200)):
            plan = router.route(request(request_id, prompt_len, 16))
            generator = engines[plan.instance_id]
            prompt = [(7 * i) % 256 for i in range(prompt_len)]
            result = generator.generate([prompt], 16)
            store = generator.cache.store  # type: ignore[attr-defined]
            precisions = {p for i in store.block_table("row-0") for p in store.get_block_info(i).layer_precisions}
            assert precisions == {plan.kv_precision.name}
            assert store.get_stats()["tiers"]["gpu"]["used_bytes"] <= plan.kv_bytes + store.config.block_bytes(
                plan.kv_precision)  # the plan reserved the context's bytes; blocks round up to 16 tokens
            router.complete(plan, generated_tokens=len(result.tokens[0]))
    events = read_scheduling_log(log_path)
    assert [(e.event, e.request_id, e.instance_id, e.tags.get("kv")) for e in events] == [
        ("route", "short", "full", "fp32"),
        ("complete", "short", "full", "fp32"),
        ("route", "long", "compact", "int4"),
        ("complete", "long", "compact", "int4"),
    ]
    assert events[3].details == {"generated_tokens": 16}
