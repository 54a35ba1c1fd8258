"""Loading profile files (accel.config): formats, presets as a base, and error messages."""

import pytest

from accel.config import load_config, resolve_config
from accel.errors import ProfileError


def test_yaml_profile_extends_a_preset(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("preset: w4a16\nquantization:\n  group_size: 64\n  kv_bits_decode: 8\n")
    config = load_config(path)
    assert config.quantization.method == "gptq"  # from the preset
    assert config.quantization.group_size == 64  # overridden
    assert config.quantization.kv_bits_decode == 8
    assert config.metadata["preset"] == "w4a16"


def test_json_profile(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"quantization": {"weight_bits": 8, "method": "rtn", "group_size": -1}}')
    assert load_config(path).quantization.weight_strategy == "channel"


def test_error_names_file_field_value_and_allowed(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("quantization:\n  weight_bits: 5\n  kv_bits_decode: 6\n")
    with pytest.raises(ProfileError) as excinfo:
        load_config(path)
    lines = str(excinfo.value).splitlines()
    assert lines[0] == f"{path}: quantization.weight_bits: got 5: Input should be 2, 3, 4, 8 or 16"
    assert lines[1] == f"{path}: quantization.kv_bits_decode: got 6: Input should be 4, 8 or 16"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "x = 1", "unknown profile format '.toml'"),
        ("p.yaml", "quantization: [1, 2", "not valid YAML"),
        ("p.json", "{", "not valid JSON"),
        ("p.yaml", "- a\n- b\n", "top level must be a mapping"),
        ("p.yaml", "preset: w5\n", "preset: got 'w5': allowed: fp16"),
        ("p.yaml", "quantisation: {}\n", "quantisation: unknown field"),
    ],
)
def test_file_errors(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ProfileError, match=message):
        load_config(path)


def test_missing_file_and_both_sources():
    with pytest.raises(ProfileError, match="no such file"):
        load_config("/nonexistent/profile.yaml")
    with pytest.raises(ProfileError, match="not both"):
        resolve_config("a.yaml", "w4a16")
    assert resolve_config().quantization.scheme_name() == "w16a16"
