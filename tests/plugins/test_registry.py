"""The registry against real installed distributions: broken, misspelt and duplicate plugins."""

from __future__ import annotations

import json

import pytest

from accel.errors import DuplicatePluginError, PluginError, UnsupportedProfileError
from accel.plugins import load_registry
from accel.plugins.loader import PluginPolicy
from accel.schema import CapabilityDescriptor

from ..conftest import FIXTURES, run_sage


def test_builtins_register_through_the_hooks():
    registry = load_registry(PluginPolicy())
    builtins = [p for p in registry.plugins if p.group == "builtin"]
    assert {p.distribution for p in builtins} == {"accel"}
    assert "rtn" in registry.quant_methods()
    assert {"nm", "block", "unstructured"} <= set(registry.sparse_formats())
    assert "magnitude" in registry.pruning_methods()
    assert "ngram" in registry.draft_strategies()
    assert "reference" in registry.kernel_backends()
    assert registry.provider("quant_method", "rtn").distribution == "accel"


def test_unknown_name_error_lists_what_is_registered():
    registry = load_registry(PluginPolicy())
    with pytest.raises(UnsupportedProfileError, match="registered: .*rtn"):
        registry.quant_method("gtpq")
    with pytest.raises(UnsupportedProfileError, match="unknown pruning method 'wandaa'; registered: .*magnitude"):
        registry.pruning_method("wandaa")


def test_select_kernel_falls_back_to_reference_and_is_traced():
    registry = load_registry(PluginPolicy())
    cap = CapabilityDescriptor(device_name="x", device_type="npu")  # accel-ascend has no fp8 kernel
    choice = registry.select_kernel("fp8_linear", cap)
    assert choice.backend == "reference"
    assert registry.kernel_trace[-1] is choice
    assert choice.meta()["kernel"].endswith("fp8_linear")
    with pytest.raises(UnsupportedProfileError, match="no kernel backend runs op 'no_such_op'"):
        registry.select_kernel("no_such_op", cap)


@pytest.fixture
def on_path(monkeypatch, install_dist):
    """Put installed fixture distributions on this process's sys.path."""

    def add(name: str) -> None:
        monkeypatch.syspath_prepend(str(install_dist(FIXTURES / name)))

    return add


@pytest.mark.slow
def test_broken_plugin_is_reported_and_the_rest_load(on_path):
    on_path("accel-broken-plugin")
    registry = load_registry(PluginPolicy())
    broken = next(p for p in registry.plugins if p.name == "broken")
    assert broken.status == "failed"
    assert broken.distribution == "accel-broken-plugin"
    assert "accel_vendor_sdk_that_does_not_exist" in broken.error
    assert "rtn" in registry.quant_methods()  # everything else still works


@pytest.mark.slow
def test_strict_mode_makes_a_broken_plugin_fatal(on_path):
    on_path("accel-broken-plugin")
    with pytest.raises(PluginError, match="accel-broken-plugin.*strict mode"):
        load_registry(PluginPolicy(strict=True))


@pytest.mark.slow
def test_denylist_skips_a_broken_plugin_even_in_strict_mode(on_path):
    on_path("accel-broken-plugin")
    registry = load_registry(PluginPolicy(deny=frozenset({"broken"}), strict=True))
    assert next(p for p in registry.plugins if p.name == "broken").status == "disabled"


@pytest.mark.slow
def test_allowlist_loads_only_named_plugins(on_path):
    on_path("accel-broken-plugin")
    registry = load_registry(PluginPolicy(allow=frozenset({"nothing-by-this-name"})))
    assert {p.status for p in registry.plugins if p.group != "builtin"} <= {"disabled"}
    assert "rtn" in registry.quant_methods()  # built-ins are not subject to the lists


@pytest.mark.slow
def test_misspelt_hook_fails_loudly(on_path):
    on_path("accel-misspelt-hook")
    registry = load_registry(PluginPolicy())
    info = next(p for p in registry.plugins if p.name == "misspelt")
    assert info.status == "failed"
    assert "accel_register_quant_method" in info.error
    with pytest.raises(PluginError, match="misspelt"):
        load_registry(PluginPolicy(strict=True))


@pytest.mark.slow
def test_duplicate_name_names_both_distributions(on_path):
    on_path("accel-duplicate-rtn")
    with pytest.raises(DuplicatePluginError) as excinfo:
        load_registry(PluginPolicy())
    message = str(excinfo.value)
    assert "'rtn'" in message and "accel-duplicate-rtn" in message and "accel (plugin" in message
    assert "ACCEL_DISABLE_PLUGINS=duprtn" in message
    registry = load_registry(PluginPolicy(deny=frozenset({"duprtn"})))  # the advice works
    assert registry.provider("quant_method", "rtn").distribution == "accel"


@pytest.mark.slow
def test_cli_reports_broken_plugin_and_strict_mode_exits_nonzero(install_dist):
    path = install_dist(FIXTURES / "accel-broken-plugin")
    result = run_sage("infer", "plugins", "--json", paths=[path])
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["broken"]["status"] == "failed"
    assert "ModuleNotFoundError" in rows["broken"]["error"]
    assert rows["builtin-quantization"]["status"] == "loaded"

    strict = run_sage("infer", "plugins", "--json", paths=[path], env={"ACCEL_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1
    assert "accel-broken-plugin" in strict.stderr and strict.stdout == ""

    check = run_sage("infer", "check", "--json", paths=[path])
    assert check.returncode == 0, check.stderr
    probe = next(p for p in json.loads(check.stdout)["platforms"] if p["name"] == "broken")
    assert probe["platform"] is None and "driver query failed" in probe["error"]


def test_kernel_meta_records_a_choice_note_only_when_there_is_one():
    from accel.plugins import KernelChoice

    plain = KernelChoice(backend="b", op="rms_norm", impl=len)
    noted = KernelChoice(backend="b", op="rms_norm", impl=len, note="no launch tuned for the X")
    assert "note" not in plain.meta() and noted.meta()["note"] == "no launch tuned for the X"
    assert {key: value for key, value in noted.meta().items() if key != "note"} == plain.meta()
