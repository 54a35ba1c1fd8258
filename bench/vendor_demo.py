"""End-to-end demo on a domestic accelerator, shared by bench/{ascend,mlu,hygon,kunlun}_demo.py.

One run, on the backend's device (the torch device string its platform uses: npu, mlu, cuda for Hygon's ROCm,
xpu), writes one report (JSON + Markdown):

1. plan: which kernel runs each layer kind of each configuration on this device, what falls back (accel.planning);
2. kernels: each op the backend selects here, timed against the portable reference on the same device at
   Llama-3-8B shapes (median of repeats, device synchronised around each batch of calls), with the relative error
   between the two;
3. decode: the runtime (static KV cache, random weights at Llama-3-8B shapes, fewer layers with --layers) per
   configuration: TTFT at --prompt-len, median decode step and tokens/s at each --batch, peak memory where the
   vendor runtime reports it (torch.<device>.max_memory_allocated);
4. roofline: the model's prediction for the same configurations from the chip family's figures (or the copy
   bandwidth measured here when the family publishes none), beside what was measured.

    python bench/ascend_demo.py                               # on the NPU -> bench/results/ascend_demo.json / .md
    python bench/ascend_demo.py --device cpu --tiny --out /tmp/ascend_cpu_smoke.json   # smoke run on the CPU

`--device cpu` runs the same code on the CPU through the reference kernels (a smoke test of the script, not a
measurement of the chip); its report is labelled so and is never written under bench/results unless --out says so.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import RESULTS, environment, write_results

from accel.planning.chips import chip_families, match_chip
from accel.planning.planner import plan_profile
from accel.planning.roofline import ModelShape, Workload, predict
from accel.plugins.registry import get_registry
from accel.runtime.quant_backend import KernelSelector
from accel.schema import QuantizationProfile
from accel.testing.conformance import TORCH_DEVICE

# Configurations: (random_model quant, runtime KV format, the QuantizationProfile the plan is made for).
CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "bf16": ("none", "none", {}),
    "w4a16": ("w4a16", "none", {"weight_bits": 4, "group_size": 128, "method": "rtn"}),
    "w8a8-int8": ("w8a8-int8", "none", {"weight_bits": 8, "activation_bits": 8, "group_size": -1, "method": "rtn"}),
    "w4a16+kv8": ("w4a16", "int8", {"weight_bits": 4, "group_size": 128, "method": "rtn", "kv_bits_prefill": 8,
                                    "kv_bits_decode": 8}),
}
ROOFLINE_FORMATS = {"none": "16-bit", "w4a16": "w4a16", "w8a8-int8": "w8a8-int8"}


def device_module(device: torch.device) -> Any:
    """torch.<device type> (torch.npu, torch.mlu, torch.cuda, torch.xpu) or None on the CPU."""
    return None if device.type == "cpu" else getattr(torch, device.type, None)


def synchronize(device: torch.device) -> None:
    module = device_module(device)
    if module is not None and hasattr(module, "synchronize"):
        module.synchronize()


def timed_ms(fn: Callable[[], object], device: torch.device, repeats: int, calls: int = 10) -> float:
    """Median over `repeats` of the wall time of `calls` calls (synchronised before and after), per call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        times.append((time.perf_counter() - start) / calls)
    return 1e3 * statistics.median(times)


def copy_bandwidth_gbps(device: torch.device, mib: int) -> float:
    """Device-to-device copy, bytes read + written per second (GB/s)."""
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), device, repeats=5, calls=3)
    return 2 * src.numel() / (ms * 1e-3) / 1e9


def kernel_inputs(op: str, m: int, n: int, k: int, device: torch.device, dtype: torch.dtype) -> tuple:
    """Inputs of `op` at a linear of out=n, in=k with m tokens (attention: m rows of a 32-head, 8-KV-head cache)."""
    from accel.quantization.weight_quant import WeightQuantArgs, quantize
    from accel.runtime.kv_ops import kv_quantize
    from accel.runtime.packing import pack_int32

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(device, dtype)
    if op == "cached_attention":
        cap, fmt = k, "int8"
        q = torch.randn(m, 32, 1, 128, generator=gen).to(device, dtype)
        keys, values = (torch.randn(m, 8, cap, 128, generator=gen).to(device) for _ in range(2))
        lens = torch.full((m,), cap, dtype=torch.int32, device=device)
        return (q, *kv_quantize(keys, fmt), *kv_quantize(values, fmt), lens, fmt, 128**-0.5)
    weight = torch.randn(n, k, generator=gen) * 0.02
    if op in ("w4a16_linear", "dequant_linear"):
        qw = quantize(weight, WeightQuantArgs(num_bits=4, strategy="group", group_size=128))
        codes = pack_int32(qw.q, 4) if op == "w4a16_linear" else qw.q
        return (x, codes.to(device), qw.scale.to(device, dtype), None, 128)
    qw = quantize(weight, WeightQuantArgs(num_bits=8, strategy="channel"))
    return (x, qw.q.to(device), qw.scale.to(device), None)


def bench_kernels(selector: KernelSelector, args: argparse.Namespace, dtype: torch.dtype) -> list[dict]:
    from accel.runtime.ops import OPS

    device, rows = selector.device, []
    n, k = (512, 256) if args.tiny else (14336, 4096)
    for op in ("w4a16_linear", "dequant_linear", "w8a8_int8_linear", "cached_attention"):
        choice = selector.choose(op)
        for m in args.batch:
            inputs = kernel_inputs(op, m, n, 256 if args.tiny and op == "cached_attention" else k, device, dtype)
            call_args, extra = inputs, {}
            if choice.prepare is not None:
                weights, extra = choice.prepare(*inputs[1:5])
                call_args = (inputs[0], *weights)
            ref = OPS[op].reference(*inputs).float()
            got = choice.impl(*call_args, **extra).float()
            rows.append({
                "op": op, "m": m, "backend": choice.backend,
                "kernel_ms": timed_ms(lambda: choice.impl(*call_args, **extra), device, args.repeats),  # noqa: B023
                "reference_ms": timed_ms(lambda: OPS[op].reference(*inputs), device, args.repeats),  # noqa: B023
                "rel_err": float((got - ref).norm() / ref.norm()),
            })
            rows[-1]["x_reference"] = rows[-1]["reference_ms"] / rows[-1]["kernel_ms"]
    return rows


def model_config(args: argparse.Namespace):
    from transformers import LlamaConfig

    from accel.tools.bench import llama3_8b_config

    if args.tiny:
        return LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return llama3_8b_config(args.layers)


def bench_decode(name: str, device: torch.device, args: argparse.Namespace, dtype: torch.dtype) -> dict:
    from accel.runtime.generate import Generator
    from accel.runtime.model import random_model

    quant, kv_format, _ = CONFIGS[name]
    config = model_config(args)
    model = random_model(config, dtype=dtype, device=device, quant=quant, kv_format=kv_format)
    module = device_module(device)
    row: dict[str, Any] = {"config": name, "kernels": model.kernel_meta()}
    gen = torch.Generator().manual_seed(1)
    prompt = torch.randint(1, config.vocab_size, (args.prompt_len,), generator=gen).tolist()
    generator = Generator(model, max_batch=max(args.batch), max_seq=args.prompt_len + args.new_tokens,
                          kv_format=kv_format, cuda_graphs=False)
    if module is not None and hasattr(module, "reset_peak_memory_stats"):
        module.reset_peak_memory_stats()
    row["ttft_ms"] = timed_ms(lambda: generator.prefill([prompt]).argmax(-1), device, args.repeats, calls=1)
    for batch in args.batch:
        prompts = [prompt[: args.decode_prompt_len]] * batch
        token = generator.prefill(prompts).argmax(-1, keepdim=True)
        steps = []
        for _ in range(args.new_tokens - 1):
            synchronize(device)
            start = time.perf_counter()
            token = generator.step(token)[:, -1].argmax(-1, keepdim=True)
            synchronize(device)
            steps.append(time.perf_counter() - start)
        row[f"tpot_ms_b{batch}"] = 1e3 * statistics.median(steps)
        row[f"tps_b{batch}"] = batch / statistics.median(steps)
    if module is not None and hasattr(module, "max_memory_allocated"):
        row["peak_gb"] = module.max_memory_allocated() / 1e9
    return row


def report(backend: str, args: argparse.Namespace) -> dict:
    registry = get_registry()
    spec = registry.kernel_backend(backend)
    device = torch.device(args.device or TORCH_DEVICE[spec.device_type])
    smoke = device.type == "cpu"
    if not smoke and not spec.is_available():
        raise SystemExit(f"{backend}: no device here ({spec.description}); run with --device cpu for a smoke test")
    selector = KernelSelector(device, registry)
    capability = selector.capability if smoke else spec.capability()
    dtype = getattr(torch, args.dtype)
    chip = None if smoke else match_chip(list(chip_families().values()), capability.device_name)
    plans = {name: plan_profile(QuantizationProfile(**profile), capability, registry, backend=backend,
                                chip=None if chip is None else chip.name).to_dict()
             for name, (_, _, profile) in CONFIGS.items()}
    kernels = bench_kernels(selector, args, dtype)
    decode = [bench_decode(name, device, args, dtype) for name in args.configs]
    bandwidth = copy_bandwidth_gbps(device, 64 if args.tiny else 1024)
    shape = ModelShape.from_hf_config(model_config(args), "tiny" if args.tiny else "llama3-8b")
    for row in decode:
        quant, kv_format, _ = CONFIGS[row["config"]]
        figures = chip.capability if chip is not None else capability
        p = predict(shape, figures, ROOFLINE_FORMATS[quant], kv_format,
                    Workload(batch=args.batch[0], context=args.decode_prompt_len + args.new_tokens // 2,
                             prompt_len=args.prompt_len, max_seq=args.prompt_len + args.new_tokens),
                    dtype=dtype, bandwidth_gbps=None if figures.memory_bandwidth_gbps else bandwidth)
        row["roofline_tps"], row["roofline_ttft_ms"], row["roofline_missing"] = (
            p.decode_tokens_per_s, p.ttft_ms, ", ".join(p.missing))
    meta = {
        **environment(), "backend": backend, "device": capability.device_name, "torch_device": str(device),
        "chip_family": None if chip is None else chip.name, "dtype": args.dtype, "copy_bandwidth_gbps": bandwidth,
        "model": shape.name, "layers": shape.num_layers, "batches": args.batch, "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens, "repeats": args.repeats,
        "smoke": "CPU SMOKE RUN: reference kernels on the host CPU, not a measurement of the chip" if smoke else "",
        "plans": plans, "kernels": kernels,
    }
    return {"meta": meta, "rows": decode}


def main(backend: str) -> None:
    parser = argparse.ArgumentParser(description=f"End-to-end {backend} demo: plan, kernels, decode, roofline.")
    parser.add_argument("--device", default=None, help="torch device (default: the backend's; cpu = smoke run)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers of Llama-3-8B (default 32)")
    parser.add_argument("--prompt-len", type=int, default=2048)
    parser.add_argument("--decode-prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tiny", action="store_true", help="a tiny model and small kernels (smoke runs)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/<backend>_demo)")
    args = parser.parse_args()
    args.batch = [int(b) for b in args.batch.split(",") if b.strip()]
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown}; known: {', '.join(CONFIGS)}")
    data = report(backend, args)
    smoke = bool(data["meta"]["smoke"])
    out = args.out or (None if smoke else RESULTS / f"{backend}_demo.json")
    title = f"{backend} demo on {data['meta']['device']}" + (" (CPU SMOKE RUN, not the chip)" if smoke else "")
    columns = ["config", "ttft_ms", "roofline_ttft_ms", *[f"tps_b{b}" for b in args.batch], "roofline_tps",
               "roofline_missing", "peak_gb", "kernels"]
    kernel_table = "\n".join(
        f"- {r['op']} m={r['m']}: {r['backend']} {r['kernel_ms']:.3f} ms vs reference {r['reference_ms']:.3f} ms "
        f"(x{r['x_reference']:.2f}), rel err {r['rel_err']:.2e}" for r in data["meta"]["kernels"])
    notes = (f"roofline_tps at batch {args.batch[0]}. Kernels (selected kernel vs the portable reference, same "
             f"device):\n\n{kernel_table}")
    if out is None:
        print(f"\n{title}\n")
        for row in data["rows"]:
            print({k: row.get(k) for k in columns})
        print(notes)
        return
    write_to(out, title, columns, data, notes)


def write_to(out: Path, title: str, columns: list[str], data: dict, notes: str) -> None:
    """Write under bench/results by name, or anywhere else by path (JSON + Markdown beside it)."""
    import common

    if out.parent.resolve() == RESULTS.resolve():
        write_results(out.stem, title, columns, data["rows"], data["meta"], notes)
        return
    saved = common.RESULTS
    try:
        common.RESULTS = out.parent
        out.parent.mkdir(parents=True, exist_ok=True)
        write_results(out.stem, title, columns, data["rows"], data["meta"], notes)
    finally:
        common.RESULTS = saved
