"""Where a decode step's time goes: Llama-3-8B shapes, random weights, batch 1, on one GPU.

Times the CUDA-graph decode step (and, with --compile, the torch.compile'd step under the graph), then profiles a
few eager steps with torch.profiler and prints the kernels by total GPU time, so the step's time splits into the
linear layers, attention, the cache write and the small elementwise kernels between them.

    python bench/profile_decode.py --quant w4a16 [--kv none] [--batch 1] [--compile] [--layers 32]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from accel.runtime.generate import Generator, vocab_argmax
from accel.runtime.model import random_model
from accel.tools.bench import llama3_8b_config


def step_ms(generator: Generator, prompts: list[list[int]], tokens: int = 64) -> float:
    generator.generate(prompts, 8)
    return 1e3 * statistics.median(generator.generate(prompts, tokens).decode_times_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quant", default="w4a16")
    parser.add_argument("--kv", default="none")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1, help="rows decoded together (each the same prompt)")
    parser.add_argument("--int4-head", action="store_true", help="lm_head quantized too (bench config w4a16-head)")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    model = random_model(llama3_8b_config(args.layers), dtype=torch.bfloat16, device="cuda", quant=args.quant,
                         quantize_lm_head=args.int4_head)
    prompts = [[(7 * j) % 1000 + 1 for j in range(128)]] * args.batch
    graph = Generator(model, max_batch=args.batch, max_seq=256, kv_format=args.kv)
    print(f"{torch.cuda.get_device_name()} {args.quant} kv={args.kv} batch {args.batch}: graph step "
          f"{step_ms(graph, prompts):.3f} ms "
          f"{model.kernel_meta()}", flush=True)
    del graph
    if args.compile:
        started = time.perf_counter()
        compiled = Generator(model, max_batch=args.batch, max_seq=256, kv_format=args.kv, compile=True)
        ms = step_ms(compiled, prompts)
        print(f"compile + graph step {ms:.3f} ms (built in {time.perf_counter() - started:.0f} s)", flush=True)
        del compiled
    eager = Generator(model, max_batch=args.batch, max_seq=256, kv_format=args.kv, cuda_graphs=False)
    token = eager.prefill(prompts).argmax(dim=-1, keepdim=True)
    for _ in range(3):  # greedy as the Generator samples (vocab_argmax: torch's one-block argmax is ~16 us)
        token = vocab_argmax(eager.step(token)[:, -1])[:, None]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            token = vocab_argmax(eager.step(token)[:, -1])[:, None]
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_time_total > 0]
    events.sort(key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.device_time_total for e in events) / 5
    print(f"GPU time per eager step {total / 1e3:.3f} ms over {sum(e.count for e in events) // 5} kernels")
    for e in events[: args.top]:
        print(f"{e.device_time_total / 5:9.1f} us  {e.count // 5:5d} x  {e.key[:110]}")


if __name__ == "__main__":
    main()
