"""Programmatic dependent launch (PDL, Hopper's grid dependency control) for the decode step's kernels.

A kernel launched with PDL may be scheduled before the kernel ahead of it in the stream has finished: once every
program of that earlier kernel has executed `griddepcontrol.launch_dependents` (or exited), the next kernel's
programs take the SM slots it frees and block in `griddepcontrol.wait` until it has completed and its writes are
visible. At decode sizes every kernel lasts a few microseconds and the launch of the next one is part of the step's
time; PDL moves that launch under the tail of the kernel before.

Where each program signals (accel-cuda/KERNEL_NOTES.md, H200, a captured chain of Llama-3-8B layers' W4A16 GEMVs at
M=1, 47.3 us a layer without PDL): at the end of its main loop (mode 2, `pdl_release` there) 46.3 us; at its start
(mode 1) 66.6 us, since then every later kernel of the chain is launched at once and waits holding SM slots; an L2
prefetch of the weights before the wait (mode 2) 60.9 us. So the kernels here use mode 2.

The rule that keeps it correct: a kernel launched with PDL calls `pdl_enter` before it reads or writes any memory
another kernel touches, so "kernel N complete" implies "every kernel before N complete" along the chain. Kernels
launched without PDL (torch's, cuBLAS) serialize as always. CUDA graph capture keeps the dependency as a
programmatic edge (CUDA 12.3+).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from accel_cuda.kernels.device import device_info
from accel_cuda.kernels.interpret import INTERPRET  # applies the interpreter fix under TRITON_INTERPRET=1

__all__ = ["RELEASE_AT_END", "pdl_enter", "pdl_mode", "pdl_release"]

RELEASE_AT_END = 2  # mode 2: wait at the start, let the next kernel launch once the main loop is done


def pdl_mode(device: torch.device) -> int:
    """The PDL mode for launches on `device`: RELEASE_AT_END on a Hopper-or-later CUDA device, 0 (off) on older
    cards, under Triton's interpreter, or with ACCEL_PDL=0. Pass it as the kernel's PDL constexpr and
    `launch_pdl=bool(mode)`."""
    if INTERPRET or device.type != "cuda" or os.environ.get("ACCEL_PDL", "1") == "0":
        return 0
    return RELEASE_AT_END if device_info(device).capability[0] >= 9 else 0


@triton.jit
def pdl_enter(PDL: tl.constexpr):
    """Wait for the previous kernel to complete (mode 1: let the next one launch first; mode 0: no-op)."""
    if PDL == 1:
        gdc_launch_dependents()
    if PDL:
        gdc_wait()


@triton.jit
def pdl_release(PDL: tl.constexpr):
    """Mode 2: let the next kernel launch now (call it where this program's main loop is done)."""
    if PDL == 2:
        gdc_launch_dependents()
