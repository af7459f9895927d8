"""The package's stages import only downhill, and no module imports itself back through others.

LAYERS is the one place the order is written: a unit (a stage folder, or a top-level module) may import from its
own unit and from any unit on a lower line, never from its own line's other units or from above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import poetc

PKG = Path(poetc.__file__).resolve().parent

LAYERS: list[set[str]] = [
    {"cli"},
    {"report", "fleet"},
    {"device"},
    {"emit"},
    {"pipeline"},
    {"frontend", "schedule"},
    {"graph"},
    {"ground"},
]
# the ground floor: one unit of top-level modules everyone may use ("" is poetc/__init__.py)
GROUND = {"boards", "data", "errors", "fmt", "progress", "resources", ""}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name (without the top package) -> file; a package is its __init__.py."""
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imports(name: str, path: Path, mods: dict[str, Path], top: str) -> set[str]:
    """Modules of the package that ``name`` imports, at any depth of its code (function-level too)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    pkg = here if is_pkg else here[:-1]
    found: set[str] = set()

    def add(base: list[str], names: list[str]) -> None:
        dotted = ".".join(base)
        for n in names:
            sub = f"{dotted}.{n}" if dotted else n
            found.add(sub if sub in mods else dotted)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else list(pkg)
                base += node.module.split(".") if node.module else []
            elif node.module and (node.module == top or node.module.startswith(top + ".")):
                base = node.module.split(".")[1:]
            else:
                continue
            add(base, [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == top or a.name.startswith(top + "."):
                    found.add(".".join(a.name.split(".")[1:]))
    found.discard(name)
    return {m for m in found if m in mods}


def check(root: Path, layers: list[set[str]], ground: set[str]) -> list[str]:
    """Every import against the order, and every cycle among modules: a list of problems, empty if none."""
    top = root.name
    mods = _modules(root)
    level = {u: k for k, units in enumerate(layers) for u in units}
    problems = []

    def unit(module: str) -> str:
        return "ground" if module in ground else module.split(".")[0]

    graph = {m: _imports(m, p, mods, top) for m, p in mods.items()}
    for m, deps in sorted(graph.items()):
        um = unit(m)
        if um not in level:
            problems.append(f"{top}.{m}: unit {um!r} is in no layer")
            continue
        for d in sorted(deps):
            ud = unit(d)
            if ud != um and (ud not in level or level[ud] <= level[um]):
                problems.append(f"{top}.{m} imports {top}.{d}: {um!r} may not import {ud!r}")
    # cycles: depth-first search with colours
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        colour[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if colour.get(d) == 1:
                cyc = [*stack[stack.index(d) :], d]
                problems.append("import cycle: " + " -> ".join(f"{top}.{c}" for c in cyc))
            elif d not in colour:
                visit(d)
        stack.pop()
        colour[m] = 2

    for m in sorted(graph):
        if m not in colour:
            visit(m)
    return problems


def test_imports_run_downhill_without_cycles():
    assert check(PKG, LAYERS, GROUND) == []


def test_every_stage_folder_says_what_it_takes_and_gives():
    for d in sorted(p for p in PKG.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((d / "__init__.py").read_text()))
        assert doc and "In:" in doc and "Out:" in doc and "May import" in doc, d.name


def test_the_checker_finds_an_uphill_import_and_a_cycle(tmp_path):
    root = tmp_path / "pkg"
    for f, text in {
        "__init__.py": "",
        "cli.py": "from .graph import ir\n",
        "graph/__init__.py": "",
        "graph/ir.py": "def f():\n    from ..cli import main\n",  # uphill, inside a function
        "graph/a.py": "from . import b\n",
        "graph/b.py": "from .a import x\n",  # a -> b -> a
    }.items():
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text(text)
    problems = check(root, [{"cli"}, {"graph"}, {"ground"}], {""})
    assert "pkg.graph.ir imports pkg.cli: 'graph' may not import 'cli'" in problems
    assert any(p.startswith("import cycle: pkg.graph.a -> pkg.graph.b -> pkg.graph.a") for p in problems)
