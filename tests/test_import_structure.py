"""The package's import graph, read from the source (function-level imports count): no circle of more than
two modules, at most two arrows inside circles in all, and the stage declarations (``stage_specs``) below
every stage module, which import them."""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "orion_utils"
STAGE_MODULES = {"prepare", "collection", "exposure", "reflection", "sft", "edit", "tailored", "evaluation",
                 "analysis", "stages"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module → the package's modules it imports anywhere in its source (the package itself left out)."""
    mods, edges = _modules(), defaultdict(set)
    for name, path in mods.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        package = [p for p in package if p]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = (node.module or "").removeprefix("orion_utils").lstrip(".")
                    if not (node.module or "").startswith("orion_utils"):
                        continue
                for alias in node.names:
                    full = f"{module}.{alias.name}".lstrip(".")
                    targets.append(full if full in mods else module)
            elif isinstance(node, ast.Import):
                targets = [a.name.removeprefix("orion_utils.") for a in node.names if a.name.startswith("orion_utils.")]
            edges[name] |= {t for t in targets if t in mods and t and t != name}
    return {m: edges[m] for m in mods}


def strongly_connected(edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's components (iterative), those of more than one module."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(root: str) -> None:
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_check_finds_a_circle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert strongly_connected(edges) == [{"a", "b", "c"}]


def test_no_circle_of_more_than_two_modules_and_at_most_two_arrows_in_circles():
    edges = import_graph()
    assert {"stages", "stage_specs", "reflection", "teachers.api.engine"} <= set(edges)
    components = strongly_connected(edges)
    assert all(len(c) <= 2 for c in components), components
    arrows = [(a, b) for c in components for a in c for b in edges[a] if b in c]
    assert len(arrows) <= 2, arrows


def test_the_stage_declarations_reach_no_stage_module():
    edges, seen, todo = import_graph(), set(), ["stage_specs"]
    while todo:
        for m in edges[todo.pop()] - seen:
            seen.add(m)
            todo.append(m)
    assert not seen & STAGE_MODULES, seen & STAGE_MODULES
    # and the stage modules take their fingerprint from there, not from the facade
    assert not any("stages" in edges[m] for m in STAGE_MODULES - {"stages"})
