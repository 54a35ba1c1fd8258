"""accel's side of the wider system's integration points: kv_runtime (a paged, quantized KV store the runtime decodes
through), scheduler_ir (execution plans carrying accel tags, tag routing, JSON-lines scheduling logs) and
comm_backend (collectives, and KV-block transfer that quantizes on send). Serving: engines (an AccelConfig and an
artifact -> vLLM / LMDeploy configs and command lines) and metrics (the standard serving metrics, and their
Prometheus exporter); docs/integration_serving.md."""

import importlib
from typing import Any

# Where each public name lives; imported on first use, so `import accel.integration.metrics` (the CLI's gate and
# panel) does not pull in torch.distributed and the KV store.
_HOMES = {
    "AccelTags": "scheduler_ir",
    "CommBackendProtocol": "comm_backend",
    "ExecutionPlan": "scheduler_ir",
    "KVBackendProtocol": "kv_runtime",
    "KVBlockTransfer": "comm_backend",
    "KVCompression": "comm_backend",
    "KVPrecision": "kv_runtime",
    "KVPrecisionEvaluator": "kv_runtime",
    "PagedKVCache": "kv_runtime",
    "PagedKVStore": "kv_runtime",
    "SchedulingLog": "scheduler_ir",
    "TagRouter": "scheduler_ir",
    "TorchDistributedBackend": "comm_backend",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'accel.integration' has no attribute {name!r}")
    return getattr(importlib.import_module(f"accel.integration.{_HOMES[name]}"), name)


__all__ = [
    "AccelTags",
    "CommBackendProtocol",
    "ExecutionPlan",
    "KVBackendProtocol",
    "KVBlockTransfer",
    "KVCompression",
    "KVPrecision",
    "KVPrecisionEvaluator",
    "PagedKVCache",
    "PagedKVStore",
    "SchedulingLog",
    "TagRouter",
    "TorchDistributedBackend",
]
