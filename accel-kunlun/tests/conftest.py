"""Markers for accel-kunlun's tests."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xpu: needs a Kunlunxin XPU with torch_xmlir; skipped without one")
