"""Env controls and entry-point loading (accel.plugins.loader)."""

from accel.plugins.loader import PluginPolicy


def test_policy_from_env_reads_allow_deny_strict():
    policy = PluginPolicy.from_env(
        {"ACCEL_PLUGINS": "cuda, ascend", "ACCEL_DISABLE_PLUGINS": "ascend", "ACCEL_STRICT_PLUGINS": "1"}
    )
    assert policy.allow == {"cuda", "ascend"}
    assert policy.deny == {"ascend"}
    assert policy.strict
    assert policy.permits("cuda")
    assert not policy.permits("ascend")  # the denylist wins
    assert not policy.permits("mlu")  # not on the allowlist


def test_policy_defaults_permit_everything():
    policy = PluginPolicy.from_env({})
    assert policy.allow is None and not policy.strict
    assert policy.permits("anything")


def test_strict_accepts_common_spellings():
    for value in ("1", "true", "YES", "on"):
        assert PluginPolicy.from_env({"ACCEL_STRICT_PLUGINS": value}).strict
    assert not PluginPolicy.from_env({"ACCEL_STRICT_PLUGINS": "0"}).strict
