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


def modules(root: Path = ROOT) -> dict[str, Path]:
    """Importable name -> file, as pyproject's package-dir maps the stage folders."""
    out = {}
    for folder, pkg in [("prunekit", "prunekit"), *((s, f"prunekit.{s}") for s in STAGES)]:
        for f in sorted((root / folder).rglob("*.py")):
            rel = f.relative_to(root / folder).with_suffix("")
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


def folder(name: str) -> str:
    """The checkout folder a module lives in: a stage's, or prunekit/ (core and app)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else "prunekit"


def imported_modules(name: str, path: Path, known) -> set[str]:
    """The modules of `known` that one module imports: `from P import n` counts P.n where that is a module, else
    P; `import a.b.c` the longest of a.b.c, a.b, a that is a module."""

    def nearest(mod: str) -> str | None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        return mod or None

    found = set()
    for mod, names, _ in imports(name, path):
        found |= {f"{mod}.{n}" if f"{mod}.{n}" in known else nearest(mod) for n in names} if names else {nearest(mod)}
    return found - {None, name}


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


def cycles(mods: dict[str, Path]) -> dict[str, list[list[str]]]:
    """Per folder, its import cycles: the strongly connected components of more than one module of the graph of
    imports between the folder's own modules (Tarjan's algorithm)."""
    graph = {
        name: sorted(m for m in imported_modules(name, path, mods) if folder(m) == folder(name))
        for name, path in mods.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out: dict[str, list[list[str]]] = {}
    for scc in sccs:
        out.setdefault(folder(scc[0]), []).append(scc)
    return out


@pytest.mark.parametrize("pkg", ["prunekit", *STAGES])
def test_no_import_cycles_within_a_package(pkg):
    """No module of a package imports, even inside a function, a module of the same package that imports it back
    (directly or around a loop): each package's modules can be read, and loaded, in one order."""
    mods = modules()
    assert any(folder(m) == pkg for m in mods)
    found = cycles(mods).get(pkg, [])
    assert found == [], f"import cycles in {pkg}/: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_each_kind(tmp_path):
    """A cycle through an import inside a function, one through `from . import`, and one through the package's
    own __init__ are found; imports that point one way, and those between packages, are not cycles."""
    files = {
        "bench/__init__.py": "from .run import run_bench\nfrom .e import E\n",
        "bench/e.py": "def h():\n    from prunekit.bench import run_bench\n",
        "bench/run.py": "from .timing import machine\ndef f():\n    from .shapes import SHAPES\n",
        "bench/shapes.py": "def g():\n    from .run import speed_once\n",
        "bench/timing.py": "import prunekit.env\nfrom prunekit.compress import x\n",
        "bench/a.py": "from . import b\n",
        "bench/b.py": "from prunekit.bench import a\n",
        "bench/c.py": "from prunekit.bench import run_bench\n",
        "bench/d.py": "from .c import y\n",
        "compress/__init__.py": "",
        "compress/run.py": "from prunekit.bench import timing\n",
        "export/__init__.py": "",
        "serve/__init__.py": "",
        "prunekit/__init__.py": "",
        "prunekit/env.py": "from prunekit.compress import run\n",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    found = cycles(modules(tmp_path))
    assert list(found) == ["bench"], found
    assert sorted(found["bench"]) == [
        ["prunekit.bench", "prunekit.bench.e"],
        ["prunekit.bench.a", "prunekit.bench.b"],
        ["prunekit.bench.run", "prunekit.bench.shapes"],
    ], found
