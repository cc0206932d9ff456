"""The import graph built from the source: no import points up the floors of
docs/architecture.md, and no two files import each other (directly or in a circle)."""

from __future__ import annotations

import ast
from pathlib import Path

import relcast

ROOT = Path(relcast.__file__).parent
# low to high (metrics.py: numpy only, the ground floor); modules not named here (config,
# runfolder, distributed, ...) have no floor
FLOORS = {"metrics": 0, "data": 1, "features": 2, "store": 2, "models": 3, "training": 4,
          "relationships": 5, "evaluation": 6, "run": 7,
          "app": 8, "qlib_adapter": 8, "cli": 9, "demo": 9, "__main__": 9}  # fmt: skip


def _modules() -> dict[str, Path]:
    mods = {}
    for f in ROOT.rglob("*.py"):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(["relcast", *parts])] = f
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    edges = {}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            out |= {r for n in names if (r := resolve(n)) and r != m}
        edges[m] = out
    return edges


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_points_up_a_floor():
    edges = _edges(_modules())
    upward = sorted(
        f"{a} -> {b}"
        for a, bs in edges.items()
        for b in bs
        if (fa := _floor(a)) is not None and (fb := _floor(b)) is not None and fb > fa
    )
    assert not upward, upward


def test_no_import_circle_between_files():
    mods = _modules()
    edges = _edges(mods)
    files = {m for m, f in mods.items() if f.name != "__init__.py"}  # packages re-export
    graph = {m: edges[m] & files for m in files}
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n] if n in path else [m, n]
            if n not in state and (cycle := visit(n, [*path, n])):
                return cycle
        state[m] = 2
        return None

    for m in sorted(files):
        if m not in state:
            cycle = visit(m, [m])
            assert cycle is None, " -> ".join(cycle)


def test_the_planted_violations_are_found(tmp_path):
    # the checks above can fail: an upward edge and a circle planted in a copy are reported
    mods = {"relcast.data.x": tmp_path / "x.py", "relcast.run.pipeline": tmp_path / "p.py"}
    mods["relcast.data.x"].write_text("from relcast.run.pipeline import Pipeline\n")
    mods["relcast.run.pipeline"].write_text("from relcast.data.x import thing\n")
    edges = _edges(mods)
    assert edges["relcast.data.x"] == {"relcast.run.pipeline"}
    assert _floor("relcast.run.pipeline") > _floor("relcast.data.x")
    assert "relcast.data.x" in edges["relcast.run.pipeline"]  # and back: a circle
