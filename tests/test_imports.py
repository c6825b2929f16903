"""The package's import graph: no cycle, and no module imports one of a higher layer.

Every module of ``keras_maskrcnn`` is parsed with ``ast`` (nothing is imported): each
``import`` / ``from ... import`` anywhere in it (module level or inside a function), relative
ones resolved, gives an edge to the package module it names. ``from a.b import c`` is an edge
to ``a.b.c`` when that is a module of the package, else to ``a.b``. A package's ``__init__``
is its own node (a submodule does not depend on it by this graph). The graph and the layers
(ops < layers < models < builders < jobs < cli) are ``bench/import_layers.py``'s, which prints
them for any checkout.
"""
import importlib.util
import os

import pytest

import support

PACKAGE = "keras_maskrcnn"


def _load_import_layers():
    spec = importlib.util.spec_from_file_location(
        "import_layers", os.path.join(support.ROOT, "bench", "import_layers.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


import_layers = _load_import_layers()


def import_graph(root=support.ROOT):
    return import_layers.import_graph(root)


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


def test_relative_and_function_level_imports_count(tmp_path):
    """A function-level relative import that closes a loop is found (the mutation check)."""
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("from . import b\n")
    (package / "sub" / "b.py").write_text("def f():\n    from ..sub.a import g\n")
    cycle = find_cycle(import_graph(str(tmp_path)))
    assert cycle == [f"{PACKAGE}.sub.a", f"{PACKAGE}.sub.b", f"{PACKAGE}.sub.a"]


def test_no_lower_layer_imports_a_higher_one():
    upward, unplaced = import_layers.violations(import_graph())
    assert not unplaced, f"modules without a layer in bench/import_layers.py: {unplaced}"
    assert not upward, "\n".join(f"{m} (layer {a}) imports {t} (layer {b})"
                                  for m, a, t, b in upward)


@pytest.mark.parametrize("module,layer", [
    ("keras_maskrcnn.ops.roi_align", 0), ("keras_maskrcnn.config.schema", 0),
    ("keras_maskrcnn.layers.rpn", 1), ("keras_maskrcnn.preprocessing", 1),
    ("keras_maskrcnn.models.mask_rcnn", 2), ("keras_maskrcnn.data.pipeline", 2),
    ("keras_maskrcnn.builders", 3), ("keras_maskrcnn.postprocessing", 3),
    ("keras_maskrcnn.convert.weights", 4), ("keras_maskrcnn.export.onnx", 4),
    ("keras_maskrcnn.predict", 4), ("keras_maskrcnn.prediction", 4),
    ("keras_maskrcnn.export.__main__", 5), ("keras_maskrcnn.cli.train", 5),
    ("keras_maskrcnn", 5), ("keras_maskrcnn.newthing", None),
])
def test_layer_rules(module, layer):
    """The longest prefix wins ("predict" does not place "prediction"; export/__main__ is
    the command line, not an exporter); an unknown module has no layer."""
    assert import_layers.layer_of(module) == layer


def test_an_upward_import_is_found(tmp_path):
    """A function-level import from ops/ into models/ is reported (the mutation check)."""
    package = tmp_path / PACKAGE
    for sub in ("ops", "models"):
        (package / sub).mkdir(parents=True)
        (package / sub / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "ops" / "boxes.py").write_text("def f():\n    from ..models.base import D\n")
    (package / "models" / "base.py").write_text("from keras_maskrcnn.ops import boxes\n")
    upward, unplaced = import_layers.violations(import_graph(str(tmp_path)))
    assert upward == [(f"{PACKAGE}.ops.boxes", 0, f"{PACKAGE}.models.base", 2)]
    assert unplaced == []
