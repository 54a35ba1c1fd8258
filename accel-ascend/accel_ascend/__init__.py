"""accel-ascend: accel's kernel backend for Huawei Ascend NPUs, found through accel's entry points."""

from accel_ascend.platform import AscendPlatform, probe

__all__ = ["AscendPlatform", "probe"]
