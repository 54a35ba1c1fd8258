"""End-to-end decode benchmark: `sage infer bench` as a script, writing bench/results/decode.json / .md by default.

TTFT, TPOT, tokens/s at batch 1/16/64 and peak memory in prefill and decode for bf16, w4a16, w8a16, w8a8-int8, fp8,
w4a16+kv8, kv4 and fp8+kv8 on Llama-3-8B shapes with random weights, beside Hugging Face eager generate; see
accel/tools/bench.py for what is measured and how.

    python bench/decode.py                                  # the full run on the GPU
    python bench/decode.py --layers 4 --repeats 2           # a smoke run
    python bench/decode.py --model bundled --device cpu --configs bf16,w4a16 --batch 1 --new-tokens 4 \\
        --repeats 1 --prompt-len 16                         # the real bundled model, on the CPU
    python bench/decode.py --help
"""

from __future__ import annotations

import sys
from pathlib import Path

from accel.tools.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(arg.split("=")[0] in ("--out", "--help", "-h") for arg in args):
        args += ["--out", str(Path(__file__).parent / "results" / "decode.json")]
    sys.argv = ["sage", "infer", "bench", *args]
    main()
