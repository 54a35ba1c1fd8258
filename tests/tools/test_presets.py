"""Every preset validates, round-trips through YAML and JSON, and carries what its name says."""

import pytest

from accel.config import dumps
from accel.errors import ProfileError
from accel.schema import AccelConfig
from accel.schema.io import validate
from accel.tools.presets import get_preset, preset_names

REQUIRED = ["fp16", "w8a8", "w4a16", "w4a16-kv8", "fp8", "w4a16-2:4", "spec-ngram"]


def test_required_presets_exist():
    assert set(REQUIRED) <= set(preset_names())


@pytest.mark.parametrize("name", preset_names())
@pytest.mark.parametrize("fmt", ["yaml", "json"])
def test_round_trip(name, fmt):
    import yaml

    config = get_preset(name)
    assert validate(AccelConfig, yaml.safe_load(dumps(config, fmt)), name) == config


@pytest.mark.parametrize(
    ("name", "scheme"),
    [("fp16", "w16a16"), ("w8a8", "w8a8"), ("w4a16", "w4a16"), ("w4a16-kv8", "w4a16-kv8"),
     ("fp8", "w8a8-fp8"), ("w4a16-2:4", "w4a16-2:4"), ("kv4", "w16a16-kv4")],
)
def test_scheme_matches_name(name, scheme):
    assert get_preset(name).quantization.scheme_name() == scheme


def test_presets_are_fresh_copies():
    get_preset("w4a16").quantization.group_size = 32
    assert get_preset("w4a16").quantization.group_size == 128


def test_spec_ngram_and_sparse_presets():
    assert get_preset("spec-ngram").speculative.strategy == "ngram"
    assert get_preset("w4a16-2:4").sparsity.nm == (2, 4)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ProfileError, match="known presets: fp16"):
        get_preset("w3a3")
