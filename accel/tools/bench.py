"""End-to-end serving numbers on the accel runtime, behind `sage infer bench` and bench/decode.py.

For each configuration (weights x KV cache format, CONFIGS) on one card: TTFT, TPOT, decode tokens/s at several
batch sizes with their coefficient of variation over repeats, and peak memory in prefill and in decode; Hugging
Face eager `generate` of the same model beside the runtime's bf16 row; ratios against both (DESIGN.md section 7:
a speed claim is a ratio measured side by side in one run on one card).

Two models:
- "llama3-8b": Llama-3-8B shapes with random weights made on the device (random_model; transformers'
  LlamaForCausalLM for HF eager), one configuration built, measured and freed at a time;
- "bundled": the real bundled SmolLM2-135M, quantized on the fly with RTN. It also reports `agreement`: the
  fraction of greedy tokens (batch 1, first --new-tokens) equal to the bf16 runtime's, a sanity check only.

Per configuration, each phase after a warm-up run (CUDA graph capture, kernel autotuning):
1. long prompt at batch 1 (prompt_len tokens): ttft_eager_ms = median over repeats of Generator.generate(prompt,
   1).ttft_s (prefill + first token, synchronised) with the prefill run eagerly. Then one prefill and new_tokens -
   1 decode steps, with the CUDA peak-memory counter reset before each phase: prefill_peak_gb and decode_peak_gb
   are each phase's torch.cuda.max_memory_allocated (weights, KV cache and activations; eager prefill). With
   prefill_graph (CUDA): a second Generator captures the prefill of prompt_len tokens (prefill_graphs) and ttft_ms
   is measured the same way on its replays; graph_pool_gb is what its CUDA graphs (the prefill's and the batch-1
   decode step's) keep reserved. Without it ttft_ms is the eager time.
2. throughput at each batch B (prompts of decode_prompt_len tokens): `repeats` generates of new_tokens tokens;
   per repeat tokens/s = B / median decode step (CUDA events); tps_bB is the median over repeats and cv_bB its
   stdev / mean. tpot_ms is the median decode step at batch 1 over all repeats.
A configuration that fails (an OOM, a missing kernel) keeps its row with the error; the others go on.
"""

from __future__ import annotations

import copy
import datetime as dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from accel.integration.metrics import metrics_block, metrics_markdown

__all__ = [
    "BASELINE",
    "CONFIGS",
    "HF_EAGER",
    "MODELS",
    "BenchConfig",
    "BenchSettings",
    "add_ratios",
    "environment",
    "llama3_8b_config",
    "markdown",
    "measure_hf",
    "measure_runtime",
    "run_bench",
    "write_results",
]


@dataclass(frozen=True)
class BenchConfig:
    """One configuration: random_model's weight format (`quant`, "none" = 16-bit), the KV cache format, and whether
    lm_head is quantized too (by default it stays 16-bit, as llm-compressor's recipes ignore it)."""

    name: str
    quant: str
    kv_format: str
    description: str
    lm_head: bool = False


BASELINE = "bf16"
HF_EAGER = "hf-eager"
CONFIGS: dict[str, BenchConfig] = {
    config.name: config
    for config in (
        BenchConfig(BASELINE, "none", "none", "16-bit weights and KV cache on the runtime (the baseline)"),
        BenchConfig(HF_EAGER, "none", "none", "transformers eager generate of the same model (dynamic cache)"),
        BenchConfig("w4a16", "w4a16", "none", "int4 weights (group 128, symmetric), 16-bit activations"),
        BenchConfig("w8a16", "w8a16", "none", "int8 weights per channel, 16-bit activations"),
        BenchConfig("w8a8-int8", "w8a8-int8", "none", "int8 weights per channel, int8 activations per token"),
        BenchConfig("fp8", "w8a8-fp8", "none", "fp8 e4m3 weights per channel, fp8 activations per token"),
        BenchConfig("w4a16-head", "w4a16", "none", "w4a16 with lm_head in int4 too (vLLM's GPTQ lm_head_quantized)",
                    lm_head=True),
        BenchConfig("w4a16+kv8", "w4a16", "int8", "w4a16 weights, int8 KV cache"),
        BenchConfig("w4a16-2:4", "w4a16-2:4", "none", "2:4-sparse int4 weights: the 2:4 GEMV decodes, dense int4 "
                    "prefills (random weights only)"),
        BenchConfig("kv4", "none", "int4", "16-bit weights, int4 KV cache"),
        BenchConfig("fp8+kv8", "w8a8-fp8", "int8", "fp8 weights and activations, int8 KV cache"),
    )
}
MODELS = ("llama3-8b", "bundled")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
WARMUP_TOKENS = 8

# RTN recipes that give the bundled model random_model's formats (QuantizationProfile fields).
BUNDLED_PROFILES: dict[str, dict[str, Any]] = {
    "w4a16": {"weight_bits": 4, "group_size": 128, "method": "rtn"},
    "w8a16": {"weight_bits": 8, "group_size": -1, "method": "rtn"},
    "w8a8-int8": {"weight_bits": 8, "activation_bits": 8, "group_size": -1, "method": "rtn"},
    "w8a8-fp8": {
        "weight_bits": 8, "weight_type": "float", "activation_bits": 8, "activation_type": "float",
        "group_size": -1, "method": "rtn",
    },
}


@dataclass
class BenchSettings:
    """What to measure; `check` names the offending CLI option."""

    model: str = "llama3-8b"
    device: str = "cuda"
    dtype: str = "bfloat16"
    configs: tuple[str, ...] = tuple(CONFIGS)
    batches: tuple[int, ...] = (1, 16, 64)
    prompt_len: int = 2048
    decode_prompt_len: int = 128
    new_tokens: int = 128
    repeats: int = 5
    layers: int | None = None
    seed: int = 0
    compile: bool = False  # torch.compile the runtime's step before capturing it (every config alike)
    prefill_graph: bool = True  # capture the long prompt's prefill in a CUDA graph for ttft_ms (CUDA; every config)

    def check(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"--model: got {self.model!r}; allowed: {', '.join(MODELS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype: got {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        unknown = [name for name in self.configs if name not in CONFIGS]
        if unknown or not self.configs:
            raise ValueError(f"--configs: unknown {unknown or 'empty list'}; known: {', '.join(CONFIGS)}")
        device = torch.device(self.device)
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"--device: got {self.device!r}; the bench runs on cpu or cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda: no CUDA device is visible here; use --device cpu --model bundled")
        for option, value, least in (
            ("--batch", min(self.batches, default=0), 1),
            ("--prompt-len", self.prompt_len, 1),
            ("--decode-prompt-len", self.decode_prompt_len, 1),
            ("--new-tokens", self.new_tokens, 2),  # one token comes from prefill: at least one decode step
            ("--repeats", self.repeats, 1),
        ):
            if value < least:
                raise ValueError(f"{option}: must be at least {least}, got {value}")
        if self.layers is not None and (self.model != "llama3-8b" or self.layers < 1):
            raise ValueError(f"--layers: a positive layer count for --model llama3-8b only, got {self.layers}")

    @property
    def short_prompt_len(self) -> int:
        """Prompt length of the throughput runs: decode_prompt_len, never more than prompt_len."""
        return min(self.decode_prompt_len, self.prompt_len)


def llama3_8b_config(layers: int | None = None):
    """transformers' LlamaConfig of Llama-3-8B (optionally with fewer decoder layers, for smoke runs)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=layers or 32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    )


# ---------------------------------------------------------------------------------------------- models


class _RandomLlama:
    """Llama-3-8B shapes, random weights made on the device in their final dtype."""

    def __init__(self, settings: BenchSettings) -> None:
        self.settings = settings
        self.config = llama3_8b_config(settings.layers)
        self.layers = self.config.num_hidden_layers
        self.name = f"Llama-3-8B shapes ({self.layers} layers), random weights"

    def prompts(self, batch: int, length: int) -> list[list[int]]:
        gen = torch.Generator().manual_seed(self.settings.seed + 7919 * batch + length)
        return torch.randint(1, self.config.vocab_size, (batch, length), generator=gen).tolist()

    def runtime(self, config: BenchConfig) -> nn.Module:
        from accel.runtime.model import random_model

        s = self.settings
        return random_model(self.config, dtype=DTYPES[s.dtype], device=s.device, quant=config.quant, seed=s.seed,
                            kv_format=config.kv_format, quantize_lm_head=config.lm_head)

    def hf(self) -> nn.Module:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(self.settings.seed)
        with torch.device(self.settings.device):
            return AutoModelForCausalLM.from_config(copy.deepcopy(self.config), dtype=DTYPES[self.settings.dtype])


class _Bundled:
    """The bundled model (float32 on the CPU, quantized copies made once per format), moved to the device per
    configuration; prompts are windows of the bundled corpus' evaluation split."""

    def __init__(self, settings: BenchSettings) -> None:
        from accel.runtime.loaders import BUNDLED_MODEL, load_model

        self.settings = settings
        self.model, self.tokenizer = load_model(None, dtype=torch.float32, device="cpu")
        self.quantized: dict[str, nn.Module] = {}
        self.layers = self.model.config.num_hidden_layers
        self.name = f"bundled {BUNDLED_MODEL} (RTN on the fly)"

    def prompts(self, batch: int, length: int) -> list[list[int]]:
        from accel.data.corpus import evaluation_windows

        windows = evaluation_windows(self.tokenizer, length)
        return [windows[i % len(windows)].tolist() for i in range(batch)]

    def runtime(self, config: BenchConfig) -> nn.Module:
        from accel.plugins.registry import get_registry
        from accel.quantization.pipeline import quantize_model
        from accel.runtime.model import from_hf
        from accel.schema import QuantizationProfile

        hf = self.model
        if config.quant != "none":
            if config.quant not in BUNDLED_PROFILES:
                raise ValueError(f"config {config.name!r} runs on random weights only (--model llama3-8b)")
            key = f"{config.quant}+head" if config.lm_head else config.quant
            if key not in self.quantized:
                quantized = copy.deepcopy(self.model)
                fields = {**BUNDLED_PROFILES[config.quant], **({"ignore": []} if config.lm_head else {})}
                quantize_model(quantized, self.tokenizer, QuantizationProfile(**fields), get_registry(),
                               progress=False)
                self.quantized[key] = quantized
            hf = self.quantized[key]
        s = self.settings
        return from_hf(hf, dtype=DTYPES[s.dtype], device=s.device, kv_format=config.kv_format)

    def hf(self) -> nn.Module:
        return copy.deepcopy(self.model).to(self.settings.device, DTYPES[self.settings.dtype])


# ---------------------------------------------------------------------------------------------- measuring


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free() -> None:
    """Release what a finished configuration held: its tensors, the allocator's cache and cuBLAS's per-stream
    workspaces (kept for the process's life otherwise, so they would count in the next configuration's peaks)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        if clear_workspaces is not None:
            clear_workspaces()
        torch.cuda.empty_cache()


class _Peak:
    """`with _Peak(device) as peak:` -> peak.gb, the most memory allocated on a CUDA device inside the block
    (None elsewhere: CPU peaks are not tracked per phase)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.gb: float | None = None

    def __enter__(self) -> _Peak:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda" and exc[0] is None:
            torch.cuda.synchronize(self.device)
            self.gb = torch.cuda.max_memory_allocated(self.device) / 1e9


def _tensor_gb(model: nn.Module) -> float:
    """GB held by the model's parameters and buffers (each storage once)."""
    seen: dict[int, int] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values()) / 1e9


def _cv(values: Sequence[float]) -> float | None:
    """Coefficient of variation stdev / mean (None with fewer than two values)."""
    return statistics.stdev(values) / statistics.mean(values) if len(values) > 1 else None


def measure_runtime(model: nn.Module, config: BenchConfig, settings: BenchSettings, prompts: Callable) -> dict:
    """TTFT and per-phase peak memory at the long prompt, then tokens/s per batch size (module docstring)."""
    from accel.runtime.generate import Generator

    device, s = model.device, settings
    row: dict[str, Any] = {"weights_gb": _tensor_gb(model), "kernels": model.kernel_meta()}
    long = prompts(1, s.prompt_len)

    def long_prompt_generator(prefill_graphs: tuple[int, ...]) -> Generator:
        return Generator(
            model, max_batch=1, max_seq=s.prompt_len + s.new_tokens, kv_format=config.kv_format, compile=s.compile,
            prefill_graphs=prefill_graphs,
        )

    def ttft_ms(generator: Generator) -> float:
        return 1e3 * statistics.median(generator.generate(long, 1).ttft_s for _ in range(s.repeats))

    generator = long_prompt_generator(())
    generator.generate(long, 1)
    row["ttft_ms"] = row["ttft_eager_ms"] = ttft_ms(generator)
    with _Peak(device) as prefill:
        token = generator.prefill(long).argmax(dim=-1, keepdim=True)  # [1, 1]
    with _Peak(device) as decode:
        for _ in range(s.new_tokens - 1):
            token = generator.step(token)[:, -1].argmax(dim=-1, keepdim=True)
    row["prefill_peak_gb"], row["decode_peak_gb"] = prefill.gb, decode.gb
    del generator
    _free()
    if s.prefill_graph and device.type == "cuda":
        generator = long_prompt_generator((s.prompt_len,))
        reserved = torch.cuda.memory_reserved(device)
        generator.generate(long, 1)  # captures the decode step and the prefill
        torch.cuda.empty_cache()  # what stays reserved past this is the graphs' private pool
        row["graph_pool_gb"] = (torch.cuda.memory_reserved(device) - reserved) / 1e9
        row["ttft_ms"] = ttft_ms(generator)
        del generator
        _free()

    generator = Generator(
        model,
        max_batch=max(s.batches),
        max_seq=s.short_prompt_len + s.new_tokens,
        kv_format=config.kv_format,
        compile=s.compile,
    )
    for batch in s.batches:
        batch_prompts = prompts(batch, s.short_prompt_len)
        generator.generate(batch_prompts, min(WARMUP_TOKENS, s.new_tokens))
        runs = [generator.generate(batch_prompts, s.new_tokens) for _ in range(s.repeats)]
        tokens_per_s = [batch / statistics.median(run.decode_times_s) for run in runs]
        row[f"tps_b{batch}"], row[f"cv_b{batch}"] = statistics.median(tokens_per_s), _cv(tokens_per_s)
        if batch == 1:
            row["tpot_ms"] = 1e3 * statistics.median(t for run in runs for t in run.decode_times_s)
            row["tokens"] = runs[0].tokens[0]
    del generator
    _synchronize(device)
    return row


def measure_hf(model: nn.Module, settings: BenchSettings, prompts: Callable) -> dict:
    """HF eager generate at batch 1, greedy: TTFT (and its prefill peak) at the long prompt, then decode steps
    timed by a logits processor that marks (synchronised) each time logits come out: step = time between marks,
    so tokens/s per repeat = 1 / median step, as for the runtime."""
    from transformers import LogitsProcessor, LogitsProcessorList

    s = settings
    device = next(model.parameters()).device

    class StepClock(LogitsProcessor):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            _synchronize(device)
            self.marks.append(time.perf_counter())
            return scores

    def run(ids: list[list[int]], new_tokens: int) -> tuple[float, list[float], list[int]]:
        """(seconds, decode step times, new tokens) of one generate call."""
        inputs, clock = torch.tensor(ids, device=device), StepClock()
        _synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), do_sample=False,
                                 max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0,
                                 logits_processor=LogitsProcessorList([clock]))
        _synchronize(device)
        steps = [b - a for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
        return time.perf_counter() - start, steps, out[0, inputs.shape[1]:].tolist()

    row: dict[str, Any] = {"weights_gb": _tensor_gb(model), "kernels": {"generate": "transformers eager"}}
    long = prompts(1, s.prompt_len)
    run(long, 1)
    with _Peak(device) as prefill:
        row["ttft_ms"] = 1e3 * statistics.median(run(long, 1)[0] for _ in range(s.repeats))
    row["prefill_peak_gb"] = prefill.gb
    short = prompts(1, s.short_prompt_len)
    run(short, min(WARMUP_TOKENS, s.new_tokens))
    runs = [run(short, s.new_tokens) for _ in range(s.repeats)]
    tokens_per_s = [1 / statistics.median(steps) for _, steps, _ in runs]
    row["tps_b1"], row["cv_b1"] = statistics.median(tokens_per_s), _cv(tokens_per_s)
    row["tpot_ms"] = 1e3 * statistics.median(t for _, steps, _ in runs for t in steps)
    row["tokens"] = runs[0][2]
    return row


# ---------------------------------------------------------------------------------------------- the run


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if isinstance(a, float | int) and isinstance(b, float | int) and b else None


def _saving(a: Any, b: Any) -> float | None:
    ratio = _ratio(a, b)
    return None if ratio is None else 1.0 - ratio


def add_ratios(rows: list[dict], settings: BenchSettings) -> None:
    """Ratios against the bf16 runtime row and HF eager (when they were measured), and the greedy-token
    agreement with the bf16 runtime (bundled model only: random weights differ between formats)."""
    by_name = {row["config"]: row for row in rows if not row.get("error")}
    base, hf = by_name.get(BASELINE), by_name.get(HF_EAGER)
    for row in rows:
        if row.get("error"):
            continue
        cvs = [row[f"cv_b{b}"] for b in settings.batches if row.get(f"cv_b{b}") is not None]
        row["cv_max"] = max(cvs, default=None)
        if base is not None:
            for batch in settings.batches:
                row[f"tps_b{batch}_x_bf16"] = _ratio(row.get(f"tps_b{batch}"), base.get(f"tps_b{batch}"))
            row["ttft_x_bf16"] = _ratio(base.get("ttft_ms"), row.get("ttft_ms"))  # speed-up: > 1 is faster
            row["ttft_saving"] = _saving(row.get("ttft_ms"), base.get("ttft_ms"))
            row["prefill_mem_saving"] = _saving(row.get("prefill_peak_gb"), base.get("prefill_peak_gb"))
            row["decode_mem_saving"] = _saving(row.get("decode_peak_gb"), base.get("decode_peak_gb"))
            if settings.model == "bundled" and base.get("tokens") and row.get("tokens"):
                pairs = list(zip(row["tokens"], base["tokens"], strict=False))
                row["agreement"] = sum(a == b for a, b in pairs) / len(pairs)
        if hf is not None:
            row["tps_b1_x_hf"] = _ratio(row.get("tps_b1"), hf.get("tps_b1"))


def columns(settings: BenchSettings) -> list[str]:
    cols = ["config", "ttft_ms", "ttft_eager_ms", "tpot_ms", *[f"tps_b{b}" for b in settings.batches], "cv_max",
            "weights_gb", "prefill_peak_gb", "decode_peak_gb", "graph_pool_gb",
            *[f"tps_b{b}_x_bf16" for b in settings.batches], "tps_b1_x_hf", "ttft_saving", "prefill_mem_saving",
            "decode_mem_saving"]
    return [*cols, "agreement", "error"] if settings.model == "bundled" else [*cols, "error"]


def environment(device: torch.device) -> dict[str, Any]:
    """The machine, card and versions a result belongs to."""
    import transformers

    from accel.runtime.cpu import cpu_capability

    card = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_capability().device_name
    env = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "device": card,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def run_bench(settings: BenchSettings, log: Callable[[str], None] = lambda message: None) -> dict[str, Any]:
    """Measure every configuration in settings.configs; returns {title, meta, columns, rows, notes}."""
    settings.check()
    device = torch.device(settings.device)
    started = time.perf_counter()
    source = _Bundled(settings) if settings.model == "bundled" else _RandomLlama(settings)
    env = environment(device)
    rows: list[dict[str, Any]] = []
    for name in settings.configs:
        config, row = CONFIGS[name], {"config": name}
        log(f"{name}: {config.description}")
        t0 = time.perf_counter()
        try:
            model = source.hf() if name == HF_EAGER else source.runtime(config)
            log(f"  built in {time.perf_counter() - t0:.1f}s ({_tensor_gb(model):.2f} GB of tensors)")
            if name == HF_EAGER:
                row.update(measure_hf(model, settings, source.prompts))
            else:
                row.update(measure_runtime(model, config, settings, source.prompts))
        except Exception as exc:  # one failing configuration (an OOM included) must not end the run
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            log(f"  failed: {row['error']}")
        finally:
            model = None
            _free()
        row["seconds"] = time.perf_counter() - t0
        rows.append(row)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k.startswith(("ttft", "tps_b")) and v)
        log(f"  {shown} ({row['seconds']:.0f}s)")
    add_ratios(rows, settings)
    if settings.model != "bundled":  # random weights: the tokens say nothing
        for row in rows:
            row.pop("tokens", None)
    settings_meta = {**asdict(settings), "torch_device": settings.device, "layers": source.layers}
    del settings_meta["device"]  # meta's "device" is the card's name
    meta = {**env, **settings_meta, "model_description": source.name, "seconds": time.perf_counter() - started}
    title = f"End-to-end decode on {env['device']}: {source.name}, {settings.dtype}"
    return {"title": title, "meta": meta, "columns": columns(settings), "rows": rows, "notes": NOTES,
            "metrics": metrics_block(rows)}


NOTES = (
    "ttft_ms: prefill of prompt_len tokens at batch 1 + first token (median of repeats), the prefill replaying a "
    "CUDA graph when prefill_graph is on (CUDA), ttft_eager_ms: the same with the prefill run eagerly. tpot_ms: "
    "median decode step at batch 1. tps_bB: decode tokens/s at batch B (prompts of decode_prompt_len tokens; median "
    "over repeats of B / median step), cv_max: largest coefficient of variation of tokens/s over repeats. Peaks: "
    "torch.cuda.max_memory_allocated per phase (weights included) at the long prompt, batch 1, eager prefill; "
    "graph_pool_gb: memory the captured prefill and decode graphs keep reserved besides. _x_bf16 / _x_hf: "
    "ratios to the runtime's bf16 row / HF eager generate of the same run; *_saving = 1 - value / bf16 value."
)


# ---------------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return "" if value is None else str(value)


def markdown(data: dict[str, Any]) -> str:
    """The results table as Markdown."""
    cols = data["columns"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in cols) + " |" for row in data["rows"]]
    return "\n".join(lines)


def write_results(data: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write the results as JSON at `out` and Markdown beside it (same name, .md); returns both paths."""
    from accel.schema.io import atomic_write_text

    out = Path(out)
    md = out.with_suffix(".md")
    atomic_write_text(out, json.dumps(data, indent=2, default=str) + "\n")
    meta = "\n".join(f"- {k}: {v}" for k, v in data["meta"].items() if not isinstance(v, dict | list | tuple))
    kernels = "\n".join(f"- {row['config']}: {row['kernels']}" for row in data["rows"] if row.get("kernels"))
    standard = metrics_markdown(data["metrics"]) if data.get("metrics") else ""
    atomic_write_text(
        md, f"# {data['title']}\n\n{meta}\n\n{markdown(data)}\n\n{data['notes']}\n\nKernels:\n\n{kernels}\n"
        + (f"\n{standard}\n" if standard else "")
    )
    return out, md

