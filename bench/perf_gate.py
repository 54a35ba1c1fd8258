"""The performance gate: `sage infer bench gate` as a script.

    python bench/perf_gate.py bench/results/decode.json --baseline bench/baselines/targets.json
    python bench/perf_gate.py bench/results/decode.json --baseline bench/baselines/<card>.json --tolerance 0.05
    python bench/perf_gate.py bench/results/decode.json --write-baseline bench/baselines/<card>.json

Exits 1 when a metric regressed beyond the tolerance or is missing; see accel/tools/perf_gate.py.
"""

from __future__ import annotations

import sys

from accel.tools.cli import main

if __name__ == "__main__":
    sys.argv = ["sage", "infer", "bench", "gate", *sys.argv[1:]]
    main()
