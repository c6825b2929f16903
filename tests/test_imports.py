"""The package's import graph has no cycle, counting function-level imports too.

Every module of ``keras_maskrcnn`` is parsed with ``ast`` (nothing is imported): each
``import`` / ``from ... import`` anywhere in it (module level or inside a function), relative
ones resolved, gives an edge to the package module it names. ``from a.b import c`` is an edge
to ``a.b.c`` when that is a module of the package, else to ``a.b``. A package's ``__init__``
is its own node (a submodule does not depend on it by this graph).
"""
import ast
import os
import sys

import pytest

import support

PACKAGE = "keras_maskrcnn"
ROOT = os.path.join(support.ROOT, PACKAGE)


def package_modules():
    """{module name: file path} of every .py file of the package."""
    modules = {}
    for directory, _, files in os.walk(ROOT):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join([PACKAGE, *parts])] = path
    return modules


def imported_names(module, path):
    """Absolute dotted names (and ``from`` targets as ``base.name``) imported by a module."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    is_package = os.path.basename(path) == "__init__.py"
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, up level - 1 packages
                package = module.split(".") if is_package else module.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            names += [(base, alias.name) for alias in node.names]
    return names


def import_graph():
    modules = package_modules()
    graph = {name: set() for name in modules}
    for module, path in modules.items():
        for base, name in imported_names(module, path):
            target = f"{base}.{name}" if name and f"{base}.{name}" in modules else base
            while target and target not in modules and target.startswith(PACKAGE + "."):
                target = target.rsplit(".", 1)[0]  # a name inside a module: that module
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def find_cycle(graph):
    """One cycle [a, b, ..., a] of the directed graph, or None."""
    state = {}  # 1: on the DFS stack, 2: done
    stack = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_every_module_is_in_the_graph():
    graph = import_graph()
    assert {"keras_maskrcnn.builders", "keras_maskrcnn.models.mask_rcnn",
            "keras_maskrcnn.models.base", "keras_maskrcnn.preprocessing"} <= set(graph)
    assert "keras_maskrcnn.models.mask_rcnn" in graph["keras_maskrcnn.builders"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("graph,expected", [
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
    ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
])
def test_find_cycle_on_small_graphs(graph, expected):
    assert find_cycle(graph) == expected


def test_relative_and_function_level_imports_count(tmp_path, monkeypatch):
    """A function-level relative import that closes a loop is found (the mutation check)."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..sub.a import g\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(package))
    cycle = find_cycle(import_graph())
    assert cycle == [f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.sub.a"]
