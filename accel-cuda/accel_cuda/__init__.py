"""accel-cuda: accel's kernel backend for NVIDIA GPUs, found through accel's entry points."""

from accel_cuda.platform import CudaPlatform, probe

__all__ = ["CudaPlatform", "probe"]
