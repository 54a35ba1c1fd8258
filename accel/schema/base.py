"""The base model every accel config shares: strict, versioned, JSON/YAML round-trippable."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class AccelModel(BaseModel):
    """Strict pydantic model: unknown fields are errors, assignments are validated.

    `schema_version` follows torchao's config versioning: bump it when a field's meaning changes, so a
    stored profile from an older accel is recognised rather than misread.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    schema_version: ClassVar[int] = 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict (what `to_json` and `to_yaml` write)."""
        return self.model_dump(mode="json")
