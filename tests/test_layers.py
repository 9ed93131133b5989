"""The layers point one way (DESIGN.md): core <- stages <- app. Every import statement counts,
including those inside functions, relative ones resolved against their package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
STAGES = ("compress", "export", "serve", "bench")
APP = {"prunekit.cli", "prunekit.pipeline", "prunekit.__main__"}


def modules() -> dict[str, Path]:
    """Importable name -> file, as pyproject's package-dir maps the stage folders."""
    out = {}
    for folder, pkg in [("prunekit", "prunekit"), *((s, f"prunekit.{s}") for s in STAGES)]:
        for f in sorted((ROOT / folder).rglob("*.py")):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([pkg, *parts])] = f
    return out


def imports(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((mod, [a.name for a in node.names], node.lineno))
    return found


def layer(name: str) -> str:
    if name in APP:
        return "app"
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return parts[1]
    return "core"


def violations(mods: dict[str, Path]) -> list[str]:
    bad = []
    for name, path in mods.items():
        src = layer(name)
        for mod, names, line in imports(name, path):
            if not (mod == "prunekit" or mod.startswith("prunekit.")):
                continue
            targets = [mod] if mod != "prunekit" else [f"prunekit.{n}" for n in names]
            for target in targets:
                dst = layer(target)
                where = f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name}:{line} imports {target}"
                if dst == src or (dst == "core" and src != "core"):
                    continue  # a layer's own modules, or the core from above
                if dst == "app":
                    # bench builds its artifacts through the one orchestrator (issue 11).
                    if not (src == "bench" and target == "prunekit.pipeline"):
                        bad.append(f"{where}: the app layer is imported from below")
                    continue
                if src == "core":
                    bad.append(f"{where}: the core imports a stage")
                elif src in ("compress", "export", "serve"):
                    bad.append(f"{where}: stage {src} imports another stage")
                elif target != f"prunekit.{dst}" or any(f"prunekit.{dst}.{n}" in mods for n in names):
                    bad.append(f"{where}{' ' + str(names) if names else ''}: a stage's internals, not its entry")
    return bad


def test_layers_point_one_way():
    mods = modules()
    assert len(mods) > 40 and all(f"prunekit.{s}" in mods for s in STAGES)
    assert violations(mods) == []


def test_the_checker_catches_each_kind(tmp_path):
    """Each rule fires on a file that breaks it (so an empty list above means something)."""
    cases = {
        "prunekit.env": "from prunekit.compress import compress",
        "prunekit.compress.run": "def f():\n    from prunekit.export import export",
        "prunekit.serve.server": "from ..export.verify import verify",
        "prunekit.bench.run": "import prunekit.compress.iterate",
        "prunekit.cli": "from prunekit.export import run",
        "prunekit.export.hf": "from prunekit import pipeline",
    }
    mods = modules()
    for name, code in cases.items():
        f = tmp_path / (name.replace(".", "_") + ".py")
        f.write_text(code + "\n")
        found = violations({**{k: v for k, v in mods.items() if k in ("prunekit.export.run",)}, name: f})
        assert len(found) == 1, (name, found)
