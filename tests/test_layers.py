"""The layers of ``mgritnn``: its import graph has no cycle, and no module imports a private name
of another subpackage.

Both tests read the source with :mod:`ast` (nothing is imported), every ``import`` and ``from ...
import`` statement of every module, at module level and inside functions and classes alike: an
import hidden inside a function still ties the two modules together, it only postpones the
failure to the first call.

The graph's nodes are the modules (``mgritnn.solvers.auto``; a package is its ``__init__``,
``mgritnn.solvers``). ``from P import n`` is an edge to the submodule ``P.n`` where that is a
module, else to ``P``. Importing ``P.m`` runs its parent packages' ``__init__`` first; that
implicit edge is left out (every package would otherwise form a cycle with its own modules).

Subpackages, for the private-name rule: a module's subpackage is the package that holds it
(``mgritnn.cells.gru`` -> ``mgritnn.cells``; a package's ``__init__`` belongs to itself). The
top-level modules (``mgritnn.model``, ``mgritnn.config``, ...) count as one subpackage,
``mgritnn``. A name is private when it starts with one underscore (``_x``, not ``__x__``).
"""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "mgritnn"
PACKAGE = "mgritnn"


def _modules():
    """{module name: (path, is a package)} of every module under ``mgritnn/``."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _subpackage(module):
    """The subpackage that holds ``module`` (the module docstring)."""
    return module if MODULES[module][1] else module.rsplit(".", 1)[0]


def _resolve(module, node):
    """The absolute module name of a ``from ... import`` statement's source in ``module``."""
    if node.level == 0:
        return node.module
    base = _subpackage(module).split(".")
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module):
    """Every import of ``module`` inside ``mgritnn``: a list of (target module, names imported
    from it (empty for ``import m``), line)."""
    path, _ = MODULES[module]
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == PACKAGE or alias.name.startswith(PACKAGE + "."):
                    out.append((alias.name, (), node.lineno))
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(module, node)
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            plain = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:
                    out.append((sub, (), node.lineno))
                else:
                    plain.append(alias.name)
            if plain:
                out.append((source, tuple(plain), node.lineno))
    return out


def _graph():
    """{module: {imported module: first line}} over ``mgritnn``'s modules."""
    graph = {}
    for module in MODULES:
        edges = graph.setdefault(module, {})
        for target, _, line in _imports(module):
            if target not in MODULES:
                raise AssertionError(f"{module}:{line} imports {target}, which is not a module "
                                     "of mgritnn")
            if target != module:
                edges.setdefault(target, line)
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan), each as a list of
    modules, and one cycle through each (a list of modules, the first repeated at the end)."""
    index, low, stack, on, comps = {}, {}, [], set(), []

    def visit(v):                          # recursive: the graph has ~60 nodes
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    out = []
    for comp in comps:
        members = set(comp)
        # one cycle: a breadth-first path back to the component's first module
        start = comp[0]
        prev, frontier = {start: None}, [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        path = [v]
                        while prev[path[-1]] is not None:
                            path.append(prev[path[-1]])
                        cycle = [start] + path[::-1][1:] + [start] if path[-1] == start \
                            else path[::-1] + [start]
                        break
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
                if cycle is not None:
                    break
            frontier = nxt
        out.append((comp, cycle))
    return out


def _describe(graph, comps):
    lines = []
    for comp, cycle in comps:
        members = set(comp)
        lines.append(f"import cycle among {len(comp)} modules: {', '.join(comp)}")
        lines.append("  for example: " + " -> ".join(cycle))
        lines.append("  its edges (importer:line -> imported):")
        for v in comp:
            for w, line in sorted(graph[v].items()):
                if w in members:
                    lines.append(f"    {v}:{line} -> {w}")
    return "\n".join(lines)


def test_the_walk_sees_the_package():
    """The walk finds the modules and their imports (a guard against a walk that sees nothing)."""
    graph = _graph()
    assert {"mgritnn", "mgritnn.model", "mgritnn.solvers.base", "mgritnn.cells.gru"} <= set(graph)
    assert "mgritnn.errors" in graph["mgritnn.solvers.base"]
    assert _cycles({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == \
        [(["a", "b", "c"], ["a", "b", "c", "a"])]


def test_no_import_cycle():
    """No cycle in ``mgritnn``'s import graph, imports inside functions included."""
    graph = _graph()
    comps = _cycles(graph)
    assert not comps, "\n" + _describe(graph, comps)


def _private_imports():
    """(importer, line, source module, private name) of every private name imported from a
    module of another subpackage: ``from m import _x``, or ``m._x`` where ``m`` names an
    imported ``mgritnn`` module."""
    found = []
    for module, (path, _) in MODULES.items():
        here = _subpackage(module)
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}                       # local name -> mgritnn module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES:
                        aliases[alias.asname or alias.name.split(".")[0]] = \
                            alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, node)
                if source not in MODULES:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in MODULES:
                        aliases[alias.asname or alias.name] = sub
                    elif (alias.name.startswith("_") and not alias.name.startswith("__")
                          and _subpackage(source) != here):
                        found.append((module, node.lineno, source, alias.name))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                source = aliases[node.value.id]
                if _subpackage(source) != here:
                    found.append((module, node.lineno, source, node.attr))
    return sorted(set(found))


def test_the_private_name_rule_sees_a_crossing(tmp_path, monkeypatch):
    """A module of ``mgritnn.solvers`` that takes ``_check_solve`` from ``mgritnn.model`` (by
    name or as an attribute of the module) is caught; ``_ok`` from its own subpackage is not."""
    fake = tmp_path / "fake.py"
    fake.write_text("from ..model import _check_solve\nfrom .. import model\nx = model._layer\n"
                    "from .base import _ok\n")
    monkeypatch.setitem(MODULES, "mgritnn.solvers.fake", (fake, False))
    found = [f for f in _private_imports() if f[0] == "mgritnn.solvers.fake"]
    assert found == [("mgritnn.solvers.fake", 1, "mgritnn.model", "_check_solve"),
                     ("mgritnn.solvers.fake", 3, "mgritnn.model", "_layer")]


def test_no_private_name_across_subpackages():
    """No module imports a private name (``_x``) from a module outside its own subpackage (the
    top-level modules are one subpackage, ``mgritnn``)."""
    found = _private_imports()
    assert not found, "\n" + "\n".join(f"{m}:{line} imports {name} from {src}"
                                       for m, line, src, name in found)


if __name__ == "__main__":                 # pragma: no cover - a listing for people
    g = _graph()
    print(_describe(g, _cycles(g)))
    for m, line, src, name in _private_imports():
        print(f"{m}:{line} imports {name} from {src}")
    pytest.main([__file__, "-q"])


#: The trainer is a small loop composing parts: no class of ``mgritnn/train/`` longer than this,
#: no function longer than :data:`MAX_FUNCTION` (lines, docstrings included).
MAX_CLASS, MAX_FUNCTION = 250, 60


def _too_long(path):
    """(kind, name, lines) of every class over MAX_CLASS and function over MAX_FUNCTION lines."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        lines = node.end_lineno - node.lineno + 1 if hasattr(node, "end_lineno") else 0
        if isinstance(node, ast.ClassDef) and lines > MAX_CLASS:
            out.append(("class", node.name, lines))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and lines > MAX_FUNCTION:
            out.append(("function", node.name, lines))
    return out


def test_the_length_rule_sees_a_long_function(tmp_path):
    src = "def f():\n" + "    x = 1\n" * MAX_FUNCTION + "\n\ndef g():\n    return 1\n"
    (tmp_path / "m.py").write_text(src)
    assert _too_long(tmp_path / "m.py") == [("function", "f", MAX_FUNCTION + 1)]


def test_the_trainer_is_made_of_small_parts():
    """No class of the training package over 250 lines, no function over 60."""
    found = {f.name: _too_long(f) for f in sorted((ROOT / "train").glob("*.py"))}
    assert not {k: v for k, v in found.items() if v}
