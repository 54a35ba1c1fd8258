"""Planning before running: chip families and their published figures, which kernel runs each layer of a profile
on a device (and what falls back), and a roofline model of the speed and memory that follows."""

from accel.planning.chips import ChipFamily, chip_families, find_chip, match_chip, runtime_capability
from accel.planning.planner import LayerPlan, Plan, plan_profile, record_plan, write_plan
from accel.planning.roofline import ModelShape, Prediction, Workload, predict, predict_plan

__all__ = [
    "ChipFamily",
    "LayerPlan",
    "ModelShape",
    "Plan",
    "Prediction",
    "Workload",
    "chip_families",
    "find_chip",
    "match_chip",
    "plan_profile",
    "predict",
    "predict_plan",
    "record_plan",
    "runtime_capability",
    "write_plan",
]
