"""Core's built-in draft strategies, registered through the draft-strategy hook."""

from __future__ import annotations

from accel.plugins.hookspecs import hookimpl
from accel.plugins.records import DraftStrategySpec
from accel.schema import SpeculativeConfig
from accel.speculative.draft import NGramDraft


def _ngram(config: SpeculativeConfig, **_resources: object) -> NGramDraft:
    return NGramDraft.from_config(config)


@hookimpl
def accel_register_draft_strategies() -> list[DraftStrategySpec]:
    return [
        DraftStrategySpec(
            name="ngram",
            description="prompt lookup: continue the latest earlier match of the last n tokens",
            factory=_ngram,
            deterministic=True,
        )
    ]
