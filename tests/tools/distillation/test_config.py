"""DistillationConfig validates its fields and round-trips through JSON."""

import pytest
from pydantic import ValidationError

from accel.tools.distillation import DistillationConfig


def test_round_trip():
    config = DistillationConfig(num_layers=8, layer_selection="strided", steps=10, temperature=2.0)
    assert DistillationConfig.model_validate(config.to_dict()) == config


def test_eval_tokens_must_hold_a_window():
    with pytest.raises(ValidationError, match="eval_tokens"):
        DistillationConfig(seq_len=256, eval_tokens=128)


@pytest.mark.parametrize("field", [{"layer_selection": "last"}, {"temperature": 0.0}, {"steps": 0}, {"lr_": 1}])
def test_invalid_fields_are_refused(field):
    with pytest.raises(ValidationError):
        DistillationConfig(**field)
