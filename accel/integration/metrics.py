"""Serving metrics: the numbers a deployment is judged by, and their Prometheus exposition.

Two halves, one vocabulary:

1. `metrics_block(rows)` turns a benchmark's result rows into the standard metrics of every configuration,
   named the same in every results file (bench/common.py and accel/tools/bench.py add it as "metrics"):
       throughput_tok_s     decode tokens per second (all rows of a batch counted; the best batch measured)
       ttft_ms, tpot_ms     time to first token; time per output token (median decode step at batch 1)
       peak_memory_gb       the larger of the prefill and decode peaks (device memory); weights_gb the weights
       cost_per_mtok_usd    price_per_gpu_hour * gpus / (throughput_tok_s * 3600) * 1e6, when a price is given
       quality_delta_pct    perplexity change against the baseline row, in percent (+ is worse)
       agreement            greedy top-1 / answer agreement with the baseline, where measured
       acceptance_rate, mean_accepted_length, fallbacks    speculative decoding, where it ran
       speedup              throughput over the baseline row's (or the row's own speed-up column); speedup_b1
                            the same at batch 1 when the best batch is larger (one request's decode speed)
   The baseline of a row is the first row of its group (same prompt, shape, batch, context, ...) whose name
   says it is one (bf16, fp32, full precision, plain, baseline).
2. `ServingMetrics`: Prometheus counters, gauges and histograms (prometheus-client, imported lazily so that
   `import accel` stays light) that the runtime's Generator and `sage infer run-speculative` update, and an
   HTTP exporter on localhost. Speculative-decoding series follow vLLM's spec-decode metric names.

The price is the user's: the `price_per_gpu_hour` argument, else the ACCEL_PRICE_PER_GPU_HOUR variable.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from accel.errors import AccelError

if TYPE_CHECKING:
    from torch import nn

    from accel.runtime.generate import GenerationResult
    from accel.speculative.metrics import RequestMetrics

__all__ = [
    "BASELINE_NAMES",
    "PRICE_ENV",
    "STANDARD_METRICS",
    "MetricsError",
    "MetricsServer",
    "ServingMetrics",
    "cost_per_million_tokens",
    "is_baseline",
    "metrics_block",
    "metrics_markdown",
    "model_bytes",
    "price_from_env",
    "row_label",
    "row_labels",
    "row_metrics",
    "sum_samples",
]

PRICE_ENV = "ACCEL_PRICE_PER_GPU_HOUR"
BASELINE_NAMES = frozenset({"bf16", "fp16", "fp32", "full precision", "plain", "baseline"})
STANDARD_METRICS = (
    "throughput_tok_s", "ttft_ms", "tpot_ms", "peak_memory_gb", "weights_gb", "cost_per_mtok_usd",
    "quality_delta_pct", "agreement", "acceptance_rate", "mean_accepted_length", "fallbacks", "speedup", "speedup_b1",
)
# Fields that name a row, in the order they are joined when a row has no `config`.
LABEL_KEYS = ("name", "scenario", "prompt", "strategy", "draft", "mode", "kind", "k", "shape", "M", "batch", "context")
_TPS = re.compile(r"^tps_b(\d+)$")
# Rows that share these values are one comparison group with one baseline (speculative_cpu: one per prompt).
GROUP_KEYS = ("prompt", "scenario", "shape", "M", "batch", "context")


class MetricsError(AccelError, ValueError):
    """A price, a results row or an exporter setting is invalid."""


# ---------------------------------------------------------------------------------------------- the numbers


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def cost_per_million_tokens(tokens_per_s: float, price_per_gpu_hour: float, gpus: int = 1) -> float:
    """US dollars per million generated tokens: what `gpus` cards cost for the hours a million tokens take."""
    if not price_per_gpu_hour > 0 or gpus < 1:
        raise MetricsError(f"price_per_gpu_hour must be > 0 and gpus >= 1, got {price_per_gpu_hour} and {gpus}")
    if not tokens_per_s > 0:
        raise MetricsError(f"tokens_per_s must be > 0 to price a million tokens, got {tokens_per_s}")
    return price_per_gpu_hour * gpus / (tokens_per_s * 3600.0) * 1e6


def price_from_env(price_per_gpu_hour: float | None = None) -> float | None:
    """The given price, else ACCEL_PRICE_PER_GPU_HOUR (a positive number of US dollars), else None."""
    if price_per_gpu_hour is not None:
        if not price_per_gpu_hour > 0:
            raise MetricsError(f"price per GPU-hour must be a positive number of dollars, got {price_per_gpu_hour}")
        return float(price_per_gpu_hour)
    text = os.environ.get(PRICE_ENV, "").strip()
    if not text:
        return None
    try:
        price = float(text)
    except ValueError:
        raise MetricsError(f"{PRICE_ENV}={text!r} is not a number; set it to the dollars one GPU-hour costs") from None
    if not price > 0:
        raise MetricsError(f"{PRICE_ENV}={text!r} must be a positive number of dollars per GPU-hour")
    return price


def row_label(row: Mapping[str, Any]) -> str:
    """A row's name: its `config`, else its naming fields joined ("chat / ngram / k=4", "up/gate / M=16")."""
    if row.get("config") not in (None, ""):
        return str(row["config"])
    parts = [
        str(row[key]) if isinstance(row[key], str) else f"{key}={row[key]}"
        for key in LABEL_KEYS if key in row and row[key] is not None
    ]
    return " / ".join(parts) or "row"


def is_baseline(row: Mapping[str, Any]) -> bool:
    """Whether a row's name says it is a reference (bf16, fp32, full precision, plain, baseline, ...)."""
    names = (row.get(key) for key in ("config", "name", "strategy", "draft", "mode"))
    return any(isinstance(name, str) and name.lower() in BASELINE_NAMES for name in names)


def _throughput(row: Mapping[str, Any]) -> tuple[float | None, int | None]:
    """(tokens/s, batch): tokens_per_s, else the best tps_bB (aggregate over the batch)."""
    for key in ("tokens_per_s", "tokens_per_second"):
        if _number(row.get(key)):
            return float(row[key]), None
    best: tuple[float | None, int | None] = (None, None)
    for key, value in row.items():
        match = _TPS.match(key)
        if match and _number(value) and (best[0] is None or value > best[0]):
            best = (float(value), int(match.group(1)))
    return best


def _first(row: Mapping[str, Any], *keys: str) -> float | None:
    return next((float(row[key]) for key in keys if _number(row.get(key))), None)


def row_metrics(
    row: Mapping[str, Any],
    baseline: Mapping[str, Any] | None = None,
    price_per_gpu_hour: float | None = None,
    gpus: int = 1,
) -> dict[str, float]:
    """The standard metrics (module docstring) one row has, against its baseline row when there is one."""
    out: dict[str, float] = {}
    tps, batch = _throughput(row)
    if tps is not None:
        out["throughput_tok_s"] = tps
        if batch is not None:
            out["throughput_batch"] = float(batch)
        if price_per_gpu_hour is not None and tps > 0:
            out["cost_per_mtok_usd"] = cost_per_million_tokens(tps, price_per_gpu_hour, gpus)
    for name, keys in (("ttft_ms", ("ttft_ms",)), ("tpot_ms", ("tpot_ms",)),
                       ("agreement", ("agreement", "top1_agreement", "answer_agreement")),
                       ("acceptance_rate", ("acceptance_rate",)), ("mean_accepted_length", ("mean_accepted_length",)),
                       ("fallbacks", ("num_fallbacks", "fallbacks"))):
        value = _first(row, *keys)
        if value is not None:
            out[name] = value
    peaks = [float(row[key]) for key in ("prefill_peak_gb", "decode_peak_gb") if _number(row.get(key))]
    if peaks:
        out["peak_memory_gb"] = max(peaks)
    weights = _first(row, "weights_gb")
    if weights is None and _number(row.get("size_mb")):
        weights = float(row["size_mb"]) / 1e3
    if weights is not None:
        out["weights_gb"] = weights
    delta = _first(row, "delta_pct", "delta_%", "perplexity_delta_pct")
    base_ppl = baseline.get("perplexity") if baseline is not None else None
    if delta is None and _number(row.get("perplexity")) and _number(base_ppl):
        delta = 100.0 * (float(row["perplexity"]) / float(base_ppl) - 1.0)
    if delta is not None:
        out["quality_delta_pct"] = delta
    base_tps = _throughput(baseline)[0] if baseline is not None else None
    if tps is not None and base_tps:
        if batch is not None and _number(baseline.get(f"tps_b{batch}")):
            base_tps = float(baseline[f"tps_b{batch}"])  # the same batch size on both sides
        out["speedup"] = tps / base_tps
    else:
        speedup = _first(row, "speedup", "x_bf16")
        if speedup is not None:
            out["speedup"] = speedup
    if batch not in (None, 1) and baseline is not None and _number(row.get("tps_b1")) and _number(
            baseline.get("tps_b1")):
        out["speedup_b1"] = float(row["tps_b1"]) / float(baseline["tps_b1"])  # latency-bound decode, one request
    return out


def row_labels(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every row's label, unique within the file: a repeated name gets " #2", " #3", ..."""
    seen: dict[str, int] = {}
    labels = []
    for row in rows:
        if not isinstance(row, Mapping):
            raise MetricsError(f"results rows must be JSON objects, got {type(row).__name__}")
        label = row_label(row)
        seen[label] = seen.get(label, 0) + 1
        labels.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return labels


def metrics_block(
    rows: Sequence[Mapping[str, Any]], price_per_gpu_hour: float | None = None, gpus: int = 1
) -> dict[str, Any]:
    """The "metrics" entry of a results file: {price_per_gpu_hour, gpus, definitions, configs: {label: {...}},
    baselines: {label: its baseline's label}} over the rows that ran (rows with an `error` are skipped).

    A row's baseline is the first row of its group (same prompt, scenario, shape, M, batch and context) whose
    name says it is one (is_baseline); a baseline row maps to itself."""
    price = price_from_env(price_per_gpu_hour)
    labels = row_labels(rows)
    group_baseline: dict[tuple, int] = {}
    for index, row in enumerate(rows):
        group = tuple(str(row.get(key)) for key in GROUP_KEYS)
        if is_baseline(row) and not row.get("error") and group not in group_baseline:
            group_baseline[group] = index
    configs: dict[str, dict[str, float]] = {}
    baselines: dict[str, str] = {}
    for row, label in zip(rows, labels, strict=True):
        if row.get("error"):
            continue
        base = group_baseline.get(tuple(str(row.get(key)) for key in GROUP_KEYS))
        configs[label] = row_metrics(row, None if base is None else rows[base], price, gpus)
        if base is not None:
            baselines[label] = labels[base]
    return {
        "price_per_gpu_hour": price,
        "gpus": gpus,
        "definitions": "accel.integration.metrics (throughput_tok_s, ttft_ms, tpot_ms, peak_memory_gb, weights_gb, "
                       "cost_per_mtok_usd, quality_delta_pct, agreement, acceptance_rate, mean_accepted_length, "
                       "fallbacks, speedup, speedup_b1)",
        "configs": configs,
        "baselines": baselines,
    }


# ---------------------------------------------------------------------------------------------- Prometheus

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise MetricsError(
            "Prometheus metrics need the prometheus-client package: pip install 'accel[metrics]'"
        ) from None
    return prometheus_client


def model_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters and buffers, each storage counted once (tied weights once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


@dataclass
class MetricsServer:
    """A running exporter: `url` serves the text format; `close()` stops it and frees the port."""

    host: str
    port: int
    _server: Any
    _thread: Any

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class ServingMetrics:
    """Prometheus series of one serving process, in a registry of its own (several can live side by side).

    The runtime calls `observe_setup(model, cache)` when a Generator is built and `observe_generation(result)`
    after each generate; speculative decoding calls `observe_speculative(request_metrics)`. Every series carries
    the label config=<config> (the profile being served).
    """

    def __init__(
        self, config: str = "default", *, price_per_gpu_hour: float | None = None, gpus: int = 1,
        namespace: str = "accel",
    ) -> None:
        prom = _prometheus()
        if gpus < 1:
            raise MetricsError(f"gpus must be >= 1, got {gpus}")
        self.config, self.gpus = config, gpus
        self.price_per_gpu_hour = price_from_env(price_per_gpu_hour)
        self.registry = prom.CollectorRegistry()
        self._drafted = 0
        self._accepted = 0
        self._drafts = 0

        def make(kind: Any, name: str, doc: str, labels: tuple[str, ...] = (), **kwargs: Any) -> Any:
            return kind(name, doc, ("config", *labels), namespace=namespace, registry=self.registry, **kwargs)

        counter, gauge, histogram = prom.Counter, prom.Gauge, prom.Histogram
        self.requests = make(counter, "requests", "Requests completed.")
        self.prompt_tokens = make(counter, "prompt_tokens", "Prompt tokens prefilled.")
        self.generation_tokens = make(counter, "generation_tokens", "Tokens generated.")
        self.ttft = make(histogram, "time_to_first_token_seconds", "Prompt submitted to first token.",
                         buckets=TTFT_BUCKETS)
        self.tpot = make(histogram, "time_per_output_token_seconds", "Decode step time per output token.",
                         buckets=TPOT_BUCKETS)
        self.throughput = make(gauge, "throughput_tokens_per_second",
                               "Decode tokens per second of the last request (all rows of its batch).")
        self.memory = make(gauge, "memory_bytes", "Bytes held: weights, kv_cache (capacity), peak.", ("kind",))
        self.cost = make(gauge, "cost_per_million_tokens_usd",
                         "US dollars per million tokens at the last throughput and the given GPU-hour price.")
        self.price = make(gauge, "gpu_hour_price_usd", "The GPU-hour price the cost is computed from.")
        self.quality = make(gauge, "quality_delta", "Quality change against the baseline (e.g. perplexity %).",
                            ("metric",))
        self.num_drafts = make(counter, "spec_decode_num_drafts", "Verify steps that drafted at least one token.")
        self.num_draft_tokens = make(counter, "spec_decode_num_draft_tokens", "Draft tokens proposed.")
        self.num_accepted_tokens = make(counter, "spec_decode_num_accepted_tokens", "Draft tokens accepted.")
        self.accepted_per_pos = make(counter, "spec_decode_num_accepted_tokens_per_pos",
                                     "Draft tokens accepted at each draft position.", ("position",))
        self.acceptance_rate = make(gauge, "spec_decode_acceptance_rate",
                                    "Accepted over drafted tokens since the process started.")
        self.mean_accepted_length = make(gauge, "spec_decode_mean_accepted_length",
                                         "1 + accepted tokens per draft step since the process started.")
        self.fallbacks = make(counter, "spec_decode_fallbacks", "Switches from speculative to plain decoding.")
        if self.price_per_gpu_hour is not None:
            self.price.labels(config).set(self.price_per_gpu_hour * gpus)

    # -------------------------------------------------------------------------------------- updates

    def set_memory(self, kind: str, nbytes: float) -> None:
        """Set one memory gauge (kind: weights, kv_cache, peak or any other name)."""
        self.memory.labels(self.config, kind).set(nbytes)

    def set_quality_delta(self, metric: str, value: float) -> None:
        """Record a measured quality change against the baseline, e.g. ("perplexity_pct", 0.8)."""
        if not _number(value):
            raise MetricsError(f"quality delta {metric!r} must be a finite number, got {value!r}")
        self.quality.labels(self.config, metric).set(value)

    def _set_throughput(self, tokens_per_s: float) -> None:
        if not tokens_per_s > 0 or not math.isfinite(tokens_per_s):
            return
        self.throughput.labels(self.config).set(tokens_per_s)
        if self.price_per_gpu_hour is not None:
            cost = cost_per_million_tokens(tokens_per_s, self.price_per_gpu_hour, self.gpus)
            self.cost.labels(self.config).set(cost)

    def observe_setup(self, model: nn.Module, cache: Any | None = None) -> None:
        """Weights and KV-cache bytes of a runtime model and its cache (the Generator calls this)."""
        self.set_memory("weights", model_bytes(model))
        if cache is not None:
            self.set_memory("kv_cache", cache.nbytes())
        import torch

        device = getattr(model, "device", None)
        if device is not None and getattr(device, "type", None) == "cuda":
            self.set_memory("peak", torch.cuda.max_memory_allocated(device))

    def observe_generation(self, result: GenerationResult) -> None:
        """One Generator.generate call: requests, tokens, TTFT, per-step TPOT and throughput."""
        config = self.config
        self.requests.labels(config).inc(len(result.tokens))
        self.prompt_tokens.labels(config).inc(sum(result.prompt_lengths))
        self.generation_tokens.labels(config).inc(sum(len(row) for row in result.tokens))
        self.ttft.labels(config).observe(result.ttft_s)
        for step in result.decode_times_s:
            self.tpot.labels(config).observe(step)
        self._set_throughput(result.decode_tokens_per_s)

    def observe_speculative(self, request: RequestMetrics) -> None:
        """One speculative request's counters (accel.speculative.metrics.RequestMetrics)."""
        config = self.config
        self.requests.labels(config).inc()
        self.generation_tokens.labels(config).inc(request.num_generated_tokens)
        self.num_drafts.labels(config).inc(request.num_drafts)
        self.num_draft_tokens.labels(config).inc(request.num_drafted_tokens)
        self.num_accepted_tokens.labels(config).inc(request.num_accepted_tokens)
        for position, accepted in enumerate(request.accepted_at):
            self.accepted_per_pos.labels(config, str(position)).inc(accepted)
        self.fallbacks.labels(config).inc(request.num_fallbacks)
        self._drafts += request.num_drafts
        self._drafted += request.num_drafted_tokens
        self._accepted += request.num_accepted_tokens
        if self._drafted:
            self.acceptance_rate.labels(config).set(self._accepted / self._drafted)
        if self._drafts:
            self.mean_accepted_length.labels(config).set(1.0 + self._accepted / self._drafts)
        self._set_throughput(request.tokens_per_second)

    # -------------------------------------------------------------------------------------- exposition

    def render(self) -> str:
        """The registry in Prometheus' text format."""
        return _prometheus().generate_latest(self.registry).decode("utf-8")

    def serve(self, port: int = 0, host: str = "127.0.0.1") -> MetricsServer:
        """Start the HTTP exporter (a daemon thread) on host:port; port 0 picks a free one."""
        if not 0 <= port <= 65535:
            raise MetricsError(f"--metrics-port must be 0..65535, got {port}")
        try:
            server, thread = _prometheus().start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise MetricsError(f"cannot serve metrics on {host}:{port}: {exc}; pick another --metrics-port") from None
        return MetricsServer(host, server.server_port, server, thread)


def sum_samples(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """Sum of the samples named `name` (matching `labels`) in a Prometheus text exposition: what a scraper
    reads, used by tests and by `sage` to check an exporter."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += sample.value
    return total


def metrics_markdown(block: Mapping[str, Any]) -> str:
    """A metrics block as a Markdown table: one row per configuration, one column per standard metric present."""
    configs: Mapping[str, Mapping[str, float]] = block.get("configs", {})
    present = [name for name in STANDARD_METRICS if any(name in values for values in configs.values())]
    if not present:
        return ""
    lines = ["| config | " + " | ".join(present) + " |", "|---|" + "---|" * len(present)]
    for label, values in configs.items():
        cells = [f"{values[name]:.4g}" if name in values else "" for name in present]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    price = block.get("price_per_gpu_hour")
    note = f"cost at ${price:g} per GPU-hour" if price else f"no GPU-hour price given ({PRICE_ENV})"
    return "Standard metrics (accel.integration.metrics; " + note + "):\n\n" + "\n".join(lines)
