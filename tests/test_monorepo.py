"""The development install holds every distribution in the repository, and `sage` sees each of them."""

import pytest
import tomllib

from .conftest import ROOT, sage_json

DISTRIBUTION_DIRS = sorted(
    path.parent for pattern in ("accel-*/pyproject.toml", "plugins/*/pyproject.toml") for path in ROOT.glob(pattern)
)


def test_every_vendor_has_its_own_distribution():
    names = {tomllib.loads((d / "pyproject.toml").read_text())["project"]["name"] for d in DISTRIBUTION_DIRS}
    assert {"accel-cuda", "accel-ascend", "accel-mlu", "accel-hygon", "accel-kunlun"} <= names
    for directory in DISTRIBUTION_DIRS:
        assert (directory / "tox.ini").is_file(), f"{directory.name} has no tox.ini"
        assert any((directory / "tests").glob("test_*.py")), f"{directory.name} has no tests"


def test_core_extras_pull_the_sibling_distributions():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["ascend"] == ["accel-ascend[npu]"]
    assert set(extras["all"]) >= {"accel-cuda", "accel-ascend[npu]", "accel-mlu", "accel-hygon", "accel-kunlun"}
    ascend = tomllib.loads((ROOT / "accel-ascend" / "pyproject.toml").read_text())["project"]
    assert ascend["optional-dependencies"]["npu"] == ["torch-npu"]


@pytest.mark.slow
def test_sage_lists_every_distribution_in_the_repo():
    rows = sage_json("infer", "plugins", env={"ACCEL_STRICT_PLUGINS": "1"})
    listed = {row["distribution"] for row in rows if row["status"] == "loaded"}
    for directory in DISTRIBUTION_DIRS:
        name = tomllib.loads((directory / "pyproject.toml").read_text())["project"]["name"]
        assert name in listed, f"{name} ({directory.name}) is not loaded; run scripts/bootstrap"
    assert "accel" in listed
