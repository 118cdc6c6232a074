"""The import graph of the package: no circle, the CAM engine below augmentation, no borrowed private names."""

from __future__ import annotations

import ast
import pathlib

import salaug

ROOT = pathlib.Path(salaug.__file__).parent


def _modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _owner(target: str) -> str:
    """The module a dotted import target lives in (``salaug.cam.base.BaseCAM`` -> ``salaug.cam.base``)."""
    while target not in MODULES:
        target = target.rsplit(".", 1)[0]
    return target


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, str, str]]]:
    edges: dict[str, set[str]] = {name: set() for name in MODULES}
    private: list[tuple[str, str, str]] = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "salaug":
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in MODULES else _owner(node.module)
                    if target != name:
                        edges[name].add(target)
                    if alias.name.startswith("_") and full not in MODULES:
                        private.append((name, node.module, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "salaug" and _owner(alias.name) != name:
                        edges[name].add(_owner(alias.name))
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    edges, _ = _imports()
    # a package __init__ re-exports its modules: an edge from a module back to its own package is
    # an import of a sibling through the package, which is no circle of code
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    assert _cycles(edges) == []


def test_the_cam_engine_imports_nothing_of_augmentation_or_sources():
    edges, _ = _imports()
    allowed = ("salaug.cam", "salaug._checks", "salaug._filters")
    outside = {(m, t) for m, ts in edges.items() if m.startswith("salaug.cam") for t in ts
               if not t.startswith(allowed)}
    assert outside == set()


def test_no_module_imports_another_modules_private_names():
    _, private = _imports()
    assert private == []


def test_sources_sit_above_transforms_and_below_the_loop():
    edges, _ = _imports()
    assert not any(t.startswith(("salaug.augmenter", "salaug.callback")) for m, ts in edges.items()
                   if m.startswith("salaug.sources") for t in ts)
    assert not any(t.startswith("salaug.sources") for m, ts in edges.items()
                   if m.startswith(("salaug.transforms", "salaug.cam")) for t in ts)
    assert "salaug.callback" not in edges["salaug.monitor"]  # the monitor shares salaug._lightning instead
