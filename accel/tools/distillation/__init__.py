"""Draft distillation: a layer-truncated copy of the target, trained on the target's logits to draft for it."""

from accel.tools.distillation.config import DistillationConfig, LayerSelection
from accel.tools.distillation.metrics import AgreementResult, compare_to_target
from accel.tools.distillation.objective import distillation_loss
from accel.tools.distillation.pipeline import DistillReport, distill_loaded, run_distill, save_draft_artifact
from accel.tools.distillation.student import make_student, select_layers
from accel.tools.distillation.train import TrainResult, train_student

__all__ = [
    "AgreementResult",
    "DistillReport",
    "DistillationConfig",
    "LayerSelection",
    "TrainResult",
    "compare_to_target",
    "distill_loaded",
    "distillation_loss",
    "make_student",
    "run_distill",
    "save_draft_artifact",
    "select_layers",
    "train_student",
]
