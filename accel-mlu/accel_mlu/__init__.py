"""accel-mlu: accel's kernel backend for Cambricon MLUs, found through accel's entry points."""

from accel_mlu.platform import MLUPlatform, probe

__all__ = ["MLUPlatform", "probe"]
