"""Shared fixtures: real distributions installed into throwaway directories, and a `sage` runner."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def pip_install_target(source: Path, target: Path) -> None:
    """Build and install one distribution into `target` (a real wheel install, no dependencies)."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )


@pytest.fixture(scope="session")
def install_dist(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """install_dist(source) -> a directory holding that distribution, installed once per session."""
    installed: dict[Path, Path] = {}

    def install(source: Path) -> Path:
        if source not in installed:
            target = tmp_path_factory.mktemp(source.name)
            pip_install_target(source, target)
            installed[source] = target
        return installed[source]

    return install


def run_sage(*args: str, paths: list[Path] = (), env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the real `sage` entry point in a fresh interpreter with extra distributions on its path."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ACCEL_")}
    environ["PYTHONPATH"] = os.pathsep.join([*map(str, paths), environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    environ["COLUMNS"] = "200"
    environ.update(env or {})
    code = "import sys; from accel.tools.cli import main; sys.argv[0] = 'sage'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=environ,
                          timeout=300)


def sage_json(*args: str, **kwargs) -> object:
    result = run_sage(*args, "--json", **kwargs)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
