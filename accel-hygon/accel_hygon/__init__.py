"""accel-hygon: accel's kernel backend for Hygon DCUs, found through accel's entry points."""

from accel_hygon.platform import HygonPlatform, probe

__all__ = ["HygonPlatform", "probe"]
