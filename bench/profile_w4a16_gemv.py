"""One W4A16 decode GEMV launch to profile under Nsight Compute (ncu --kernel-name regex:_gemv_kernel ...).

    ncu --clock-control none --kernel-name regex:_gemv_kernel --launch-skip 5 --launch-count 1 --set full \\
        python bench/profile_w4a16_gemv.py --n 14336 --k 4096 --block-n 32 --ng 2 --split 2
"""

from __future__ import annotations

import argparse

import torch
from accel_cuda.kernels.w4a16_gemv import GemvConfig, permute_nibbles, w4a16_gemv
from kernels_w4a16 import make_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=14336)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--m", type=int, default=1)
    parser.add_argument("--block-n", type=int, default=32)
    parser.add_argument("--ng", type=int, default=2)
    parser.add_argument("--split", type=int, default=2)
    parser.add_argument("--prefetch", action="store_true")
    parser.add_argument("--fp32-path", action="store_true")
    args = parser.parse_args()
    _, packed, scale, _, _ = make_weights(args.n, args.k, True, seed=1)
    words = packed if args.fp32_path else permute_nibbles(packed)
    x = torch.randn(args.m, args.k, device="cuda", dtype=torch.bfloat16)
    cfg = GemvConfig(args.block_n, args.ng, args.split, args.prefetch)
    for _ in range(10):
        w4a16_gemv(x, words, scale, None, config=cfg, permuted=not args.fp32_path)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
