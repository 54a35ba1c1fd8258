"""Timing helpers the GPU micro-benchmarks share (METHOD.md): graph replays timed by do_bench, the copy ceiling.

A kernel call is timed inside a CUDA graph of `calls` calls cycling over several weight or cache copies (more
bytes than L2 holds, so every call reads device memory), after warm-up outside the capture; the median replay
over the number of calls is microseconds per call. The graph keeps host launch overhead out of device time, as
a captured decode step does.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from triton.testing import do_bench


def graph_us(calls: list[Callable[[], object]], n_calls: int, quick: bool = False, rep_ms: int = 100) -> float:
    """Microseconds per call: `calls` cycled to at least n_calls, captured in one CUDA graph, replays timed by
    do_bench (median; quick: 5 ms warm-up and 30 ms of replays, else rep_ms / 4 and rep_ms)."""
    calls = [calls[i % len(calls)] for i in range(max(n_calls, len(calls)))]
    for call in calls:  # compile and warm up outside the capture
        call()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    warmup, rep = (5, 30) if quick else (rep_ms // 4, rep_ms)
    ms = do_bench(graph.replay, warmup=warmup, rep=rep, return_mode="median")
    del graph
    return ms * 1e3 / len(calls)


def eager_us(calls: list[Callable[[], object]]) -> float:
    """Microseconds per call, calls issued eagerly back to back and synchronized once (host or device bound)."""
    for call in calls:
        call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(3):
        for call in calls:
            call()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / (3 * len(calls)) * 1e6


def fused_vs_reference(
    ref: list[Callable[[], object]], ours: list[Callable[[], object]], n_calls: int, quick: bool = False
) -> dict[str, float]:
    """A fused kernel against the reference torch chain it replaces, on the same calls: graph-timed (device time,
    as in a captured step) and eager (host launches included), with both speed-ups."""
    ref_us, fused_us = graph_us(ref, n_calls, quick), graph_us(ours, n_calls, quick)
    ref_eager = eager_us([ref[i % len(ref)] for i in range(n_calls)])
    fused_eager = eager_us([ours[i % len(ours)] for i in range(n_calls)])
    return {"ref_us": ref_us, "fused_us": fused_us, "x_graph": ref_us / fused_us, "ref_eager_us": ref_eager,
            "fused_eager_us": fused_eager, "x_eager": ref_eager / fused_eager}


def host_us(call: Callable[[], object], n: int = 200) -> float:
    """Host time to enqueue one call (eager, no graph), microseconds."""
    call()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        call()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / n * 1e6


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float32."""
    return float((got.float() - ref.float()).norm() / ref.float().norm())


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second (TB/s), 1 GiB each way."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e12
