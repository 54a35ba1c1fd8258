"""Markers for accel-hygon's tests."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "dcu: needs a Hygon DCU with ROCm PyTorch; skipped without one")
