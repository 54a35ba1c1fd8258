"""CoTConfig: modes combine where sensible, errors name the field, and it round-trips through JSON."""

import pytest
from pydantic import ValidationError

from accel.schema import AccelConfig, CoTAccelConfig, CoTConfig


def test_modes_are_stored_as_an_ordered_list() -> None:
    assert CoTConfig().mode == ["lossless"] and not CoTConfig().lossy
    config = CoTConfig(mode="budget+early_exit", thinking_budget=64)
    assert config.mode == ["early_exit", "budget"] and config.lossy and config.label == "early_exit+budget"
    assert CoTConfig(mode=["step_speculation", "early_exit"]).mode == ["step_speculation", "early_exit"]
    assert CoTAccelConfig is CoTConfig


@pytest.mark.parametrize(("fields", "message"), [
    ({"mode": "guess"}, "mode"),
    ({"mode": []}, "mode needs at least one"),
    ({"mode": ["lossless", "early_exit"]}, "mode 'lossless' cannot be combined"),
    ({"mode": "budget"}, "needs thinking_budget"),
    ({"mode": "early_exit", "thinking_budget": 8}, "thinking_budget is only used by mode 'budget'"),
    ({"mode": "budget", "thinking_budget": 300, "max_new_tokens": 200}, "thinking_budget .300. must not exceed"),
    ({"step_accept_threshold": 1.5}, "step_accept_threshold"),
    ({"probe_interval": 0}, "probe_interval"),
    ({"early_exit_agreement": 0}, "early_exit_agreement"),
    ({"step_delimiter": ""}, "step_delimiter"),
    ({"temperature": -1}, "temperature"),
    ({"answer_tokens": 0}, "answer_tokens"),
])
def test_errors_name_the_field(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CoTConfig(**fields)


def test_round_trips_inside_accel_config() -> None:
    config = AccelConfig(cot_accel=CoTConfig(mode="step_speculation+budget", thinking_budget=32, step_delimiter="\n"))
    assert AccelConfig.model_validate_json(config.model_dump_json()) == config
