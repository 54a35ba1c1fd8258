"""accel-kunlun: accel's kernel backend for Kunlunxin XPUs, found through accel's entry points."""

from accel_kunlun.platform import KunlunPlatform, probe

__all__ = ["KunlunPlatform", "probe"]
