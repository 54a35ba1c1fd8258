"""DistillationConfig: how a layer-truncated draft is cut from its target and trained on the target's logits."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from accel.schema.base import AccelModel

LayerSelection = Literal["first", "strided"]

# Fields that may change between a run and its --resume: they do not change the trajectory of the weights.
RESUMABLE_FIELDS = frozenset({"checkpoint_every", "eval_tokens", "generate_batch"})


class DistillationConfig(AccelModel):
    """A student of `num_layers` decoder layers of the target, trained with KL(p_target || p_student).

    `layer_selection` "first" keeps layers 0 .. num_layers-1; "strided" keeps num_layers layers evenly spread
    over the stack, first and last included (6 of 30: 0, 6, 12, 17, 23, 29). Embeddings, the final norm and
    lm_head start as copies of the target's; `train_embeddings` False keeps them frozen (the draft then
    predicts through the target's own output head, and each step is cheaper).

    The learning rate warms up linearly over `warmup_steps`, then follows a cosine down to lr * min_lr_ratio
    at `steps`. Batches are `batch_size` windows of `seq_len` tokens of the training text (the calibration
    split of the bundled corpus by default; never its evaluation split, which the before/after report uses).

    `text_source` "generated" trains on the target's own replies (selfgen.py) to `generate_prompts`
    instruction prompts, each up to `generate_tokens` new tokens at `generate_temperature` (0: greedy, the
    text greedy speculative decoding verifies); the before/after agreement is then measured on its replies to
    held-out prompts. Replies are generated `generate_batch` prompts at a time on the target's device.
    """

    num_layers: int = Field(default=6, ge=1)
    layer_selection: LayerSelection = "first"
    steps: int = Field(default=200, ge=1)
    seq_len: int = Field(default=128, ge=2)
    batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=5e-4, gt=0.0)
    warmup_steps: int = Field(default=10, ge=0)
    min_lr_ratio: float = Field(default=0.1, ge=0.0, le=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    max_grad_norm: float = Field(default=1.0, gt=0.0)
    temperature: float = Field(default=1.0, gt=0.0)
    train_embeddings: bool = False
    text_source: str = "bundled"
    generate_prompts: int = Field(default=512, ge=1)
    generate_tokens: int = Field(default=256, ge=1)
    generate_temperature: float = Field(default=0.0, ge=0.0)
    generate_batch: int = Field(default=64, ge=1)
    checkpoint_every: int = Field(default=50, ge=1)
    eval_tokens: int = Field(default=4096, ge=2)
    seed: int = 0

    @model_validator(mode="after")
    def _eval_fits(self) -> DistillationConfig:
        if self.eval_tokens < self.seq_len:
            raise ValueError(f"eval_tokens ({self.eval_tokens}) must hold at least one window of seq_len "
                             f"({self.seq_len}) tokens")
        return self
