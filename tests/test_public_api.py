"""The curated public surface (httpx's habit): every exported name exists, and the wheel has every package."""

import subprocess
import sys
import zipfile

import pytest

import accel

from .conftest import ROOT


def test_all_names_resolve():
    for name in accel.__all__:
        assert getattr(accel, name) is not None, name


@pytest.mark.slow
def test_wheel_contains_every_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("accel-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = {str(p.relative_to(ROOT)) for p in (ROOT / "accel").rglob("__init__.py")}
    assert packages <= names, sorted(packages - names)
    assert "accel/runtime/mixed_precision.py" in names and "accel/tools/cli.py" in names
