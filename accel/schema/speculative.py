"""SpeculativeConfig: draft-and-verify decoding."""

from __future__ import annotations

from pydantic import Field, model_validator

from accel.schema.base import AccelModel


class SpeculativeConfig(AccelModel):
    """Draft-and-verify decoding; names follow vLLM's speculative config where one exists.

    Dynamic draft length grows k by one on full acceptance and shrinks it on a rejection, within
    [min_speculative_tokens, max_speculative_tokens]. Speculation switches off above
    `disable_by_batch_size` and when the rolling acceptance rate over `acceptance_window` steps falls below
    `min_acceptance_rate` (the kill switch).
    """

    enabled: bool = True
    strategy: str = "ngram"
    num_speculative_tokens: int = Field(default=4, ge=1, le=64)
    dynamic_draft_length: bool = True
    min_speculative_tokens: int = Field(default=1, ge=1)
    max_speculative_tokens: int = Field(default=8, ge=1, le=64)
    draft_model: str | None = None
    prompt_lookup_min: int = Field(default=1, ge=1)
    prompt_lookup_max: int = Field(default=4, ge=1)
    skip_layers: list[int] = Field(default_factory=list)
    draft_quantization: str | None = None
    disable_by_batch_size: int | None = Field(default=None, ge=1)
    min_acceptance_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    acceptance_window: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _ranges(self) -> SpeculativeConfig:
        if self.min_speculative_tokens > self.max_speculative_tokens:
            raise ValueError("min_speculative_tokens must not exceed max_speculative_tokens")
        if self.prompt_lookup_min > self.prompt_lookup_max:
            raise ValueError("prompt_lookup_min must not exceed prompt_lookup_max")
        if self.strategy == "draft_model" and not self.draft_model:
            raise ValueError("strategy 'draft_model' needs draft_model (a model id or directory)")
        return self
