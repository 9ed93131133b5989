"""The Dockerfile and the CI workflow reuse the one install script and the Makefile (Docker itself is
not available on these machines, so what can be checked is checked here)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_dockerfile_reuses_setup_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    steps = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert any(ln.startswith("RUN scripts/setup.sh") for ln in steps)
    assert not re.search(r"pip3? install", text), "pins live in pyproject.toml; install only via setup.sh"
    users = [ln.split()[1] for ln in steps if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["prunekit"]' in text
    # setup.sh runs before anything else of the image's commands is installed
    assert steps.index(next(ln for ln in steps if ln.startswith("USER "))) < \
        steps.index(next(ln for ln in steps if ln.startswith("RUN scripts/setup.sh")))
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "artifacts", ".git"} <= set(ignored)


def test_ci_and_workflow_call_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    wf = (ROOT / ".github" / "workflows" / "artifacts.yml").read_text()
    assert "run: make artifacts" in wf and "upload-artifact" in wf
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^artifacts: setup$", make, re.M)
    assert "scripts/setup.sh" in make
