#!/usr/bin/env bash
# One device session for accel-cuda's kernels (METHOD.md: build, check and time in one call): installs the core and
# this plugin (entry points), runs the GPU tests in parallel shards, then the kernel benchmarks one after another.
# Usage, from the repository root on the device machine, after putting /tmp/site first on PYTHONPATH:
#     OUT=/some/dir bash accel-cuda/gpu_check.sh [tests|bench|all]
# $OUT receives tests.log, bench.log and the benchmark results (few files: the device returns a limited number).
set -u
what=${1:-all}
mkdir -p "$OUT"
# --upgrade: a warm machine may hold an earlier copy in /tmp/site, which would shadow this tree.
python3 -m pip install -q --upgrade --no-index --no-deps --no-build-isolation --target /tmp/site . ./accel-cuda \
    >"$OUT/tests.log" 2>&1 || echo "pip install of accel / accel-cuda failed (see tests.log)"
python3 -c "import accel_cuda.kernels.attention as a, inspect; print('installed from', a.__file__)" >>"$OUT/tests.log" 2>&1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv >>"$OUT/tests.log" 2>&1
if [ "$what" != bench ]; then
    cd accel-cuda
    shard() { timeout "${TEST_TIMEOUT:-150}" python3 -m pytest -q -p no:cacheprovider --tb=short "$@"; }
    shard tests/test_cuda_attention.py -k "decode or graph or registry" >/tmp/t_attn1.log 2>&1 &
    shard tests/test_cuda_attention.py -k "odd or float32 or every" >/tmp/t_attn2.log 2>&1 &
    shard tests/test_cuda_w8a8.py -k "matches or codes or static or float32 or registry" >/tmp/t_w8a.log 2>&1 &
    shard tests/test_cuda_w8a8.py tests/test_cuda_conformance.py tests/test_cuda_platform.py tests/test_cuda_gpu.py \
        -k "llama or every or conformance or kernel_table or capability or reference" >/tmp/t_w8b.log 2>&1 &
    wait
    cat /tmp/t_attn1.log /tmp/t_attn2.log /tmp/t_w8a.log /tmp/t_w8b.log >>"$OUT/tests.log"
    for f in /tmp/t_*.log; do echo "== $f"; grep -E "passed|failed|error" "$f" | tail -1; grep -E "^FAILED|^ERROR|^E  " "$f" | head -12 | cut -c1-300; done
    cd ..
fi
if [ "$what" != tests ]; then
    timeout "${ATTN_TIMEOUT:-200}" python3 bench/kernels_attention.py ${ATTN_ARGS:-} >/tmp/bench_attn.log 2>&1 || echo "attention bench rc=$?"
    timeout "${W8_TIMEOUT:-150}" python3 bench/kernels_w8a8.py ${W8_ARGS:-} >/tmp/bench_w8a8.log 2>&1 || echo "w8a8 bench rc=$?"
    cat /tmp/bench_attn.log /tmp/bench_w8a8.log >"$OUT/bench.log"
    cp bench/results/kernels_attention.* bench/results/kernels_w8a8.* "$OUT/" 2>/dev/null
    grep -E "^sweep" /tmp/bench_attn.log /tmp/bench_w8a8.log | cut -c1-420
    tail -n 12 /tmp/bench_attn.log | cut -c1-900; tail -n 14 /tmp/bench_w8a8.log
fi
