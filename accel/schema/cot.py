"""CoTConfig: chain-of-thought acceleration (lossless token speculation, step speculation, early exit, budget)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from accel.schema.base import AccelModel

CoTMode = Literal["lossless", "step_speculation", "early_exit", "budget"]
COT_MODES: tuple[CoTMode, ...] = ("lossless", "step_speculation", "early_exit", "budget")


class CoTConfig(AccelModel):
    """How CoTAccelController decodes a reasoning trace. Only `lossless` keeps the output identical to
    plain decoding; the other modes trade answer agreement for fewer thinking tokens or target forwards.

    - `lossless`: token-level draft-and-verify (speculative_generate); cannot be combined with another mode.
    - `step_speculation` (SpecReason): a draft writes each step up to `step_delimiter` (at most
      `max_step_tokens`); the target keeps it when the step's geometric-mean token probability under the
      target, exp(mean log p), is at least `step_accept_threshold`, and writes the step itself otherwise.
    - `early_exit` (Dynasor, DEER): every `probe_interval` thinking tokens, a side branch appends
      `answer_prompt` and decodes up to `answer_tokens` greedily; thinking stops once the last
      `early_exit_agreement` probed answers are equal.
    - `budget`: thinking stops after `thinking_budget` tokens and the answer is forced with `answer_prompt`.
    The lossy modes combine freely. `max_new_tokens` caps thinking in every mode (the unaccelerated
    baseline included); the answer after a forced `answer_prompt` adds at most `answer_tokens`.

    `mode` takes one mode, a list, or a '+'-joined string ("early_exit+budget"); it is stored as a list in
    COT_MODES order. Version 2: `mode` became a list and gained `budget`.
    """

    schema_version: ClassVar[int] = 2

    mode: list[CoTMode] = Field(default_factory=lambda: ["lossless"])
    max_new_tokens: int = Field(default=256, ge=1)
    thinking_budget: int | None = Field(default=None, ge=1)
    step_delimiter: str = Field(default="\n\n", min_length=1)
    step_accept_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_step_tokens: int = Field(default=64, ge=1)
    probe_interval: int = Field(default=32, ge=1)
    early_exit_agreement: int = Field(default=2, ge=1)
    answer_prompt: str = Field(default="\nAnswer:", min_length=1)
    answer_tokens: int = Field(default=12, ge=1, le=64)
    temperature: float = Field(default=0.0, ge=0.0)
    seed: int = 0

    @field_validator("mode", mode="before")
    @classmethod
    def _split_modes(cls, value: object) -> object:
        return value.split("+") if isinstance(value, str) else value

    @field_validator("mode")
    @classmethod
    def _order_modes(cls, value: list[CoTMode]) -> list[CoTMode]:
        if not value:
            raise ValueError(f"mode needs at least one of {list(COT_MODES)}")
        if "lossless" in value and len(set(value)) > 1:
            raise ValueError("mode 'lossless' cannot be combined with the lossy modes "
                             f"{sorted(set(value) - {'lossless'})}; use it alone")
        return [mode for mode in COT_MODES if mode in value]

    @model_validator(mode="after")
    def _budget(self) -> CoTConfig:
        if "budget" in self.mode and self.thinking_budget is None:
            raise ValueError("mode 'budget' needs thinking_budget (the most thinking tokens before the answer)")
        if self.thinking_budget is not None and "budget" not in self.mode:
            raise ValueError("thinking_budget is only used by mode 'budget'; add 'budget' to mode or unset it")
        if self.thinking_budget is not None and self.thinking_budget > self.max_new_tokens:
            raise ValueError(f"thinking_budget ({self.thinking_budget}) must not exceed max_new_tokens "
                             f"({self.max_new_tokens})")
        return self

    @property
    def lossy(self) -> bool:
        return self.mode != ["lossless"]

    @property
    def label(self) -> str:
        """The modes joined with '+', as `mode` accepts them back."""
        return "+".join(self.mode)


CoTAccelConfig = CoTConfig
"""The name AccelConfig.cot_accel and accel's public API have used since issue 1."""
