"""The import graph of keras_maskrcnn in layers: no module imports one of a higher layer.

The layers (/work/shared/DESIGN.md, sections 1-2), lowest first:
    0 ops          ops/ (the method as tensor functions), config/ (the schema: plain data)
    1 layers       layers/, losses/, accel/ (kernels swapped into layers), preprocessing
    2 models       models/, inference and batch_inference (the model's detect), data/
    3 builders     builders, postprocessing (config -> parts, models and their postprocessor)
    4 jobs         training/, evaluation, export/, convert/, run, prediction, predict, demo,
                   visualize, media; cli/weights.py (which weights file a command loads: an
                   import-light helper that predict and export/command.py share with cli/)
    5 cli          cli/, the ``__main__`` modules, the package's ``__init__`` (public API)
An import inside one layer or to a lower one is fine; one to a higher layer is a violation.
Function-level and relative imports count (``ast``, nothing is imported or run). A module no
rule places is reported too (a new module must be given a layer here).

Usage: python bench/import_layers.py [REPO_ROOT ...]   (default: this checkout)
Prints, per checkout, each module's layer and package-internal imports, then the violations;
exits 1 when a checkout has a violation or an unplaced module.
"""
import ast
import os
import sys

PACKAGE = "keras_maskrcnn"
LAYER_NAMES = ("ops", "layers", "models", "builders", "jobs", "cli")
# (module prefix inside the package, layer): the longest matching prefix wins; "" = __init__.
RULES = (
    ("ops", 0), ("config", 0),
    ("layers", 1), ("losses", 1), ("accel", 1), ("preprocessing", 1),
    ("models", 2), ("inference", 2), ("batch_inference", 2), ("data", 2),
    ("builders", 3), ("postprocessing", 3),
    ("training", 4), ("evaluation", 4), ("export", 4), ("convert", 4), ("run", 4),
    ("prediction", 4), ("predict", 4), ("demo", 4), ("visualize", 4), ("media", 4),
    ("cli", 5), ("cli.weights", 4), ("__main__", 5), ("convert.__main__", 5),
    ("export.__main__", 5), ("", 5),
)


def package_modules(root):
    """{dotted module name: file path} of every .py file under ``root``/keras_maskrcnn."""
    base = os.path.join(root, PACKAGE)
    modules = {}
    for directory, _, files in os.walk(base):
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, base)[:-3].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join([PACKAGE, *parts])] = path
    return modules


def imported_names(module, path):
    """(base, name) pairs of every import in a module, relative ones made absolute."""
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


def import_graph(root):
    """{module: set of package modules it imports}; ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b`` (a package's ``__init__`` is its own
    node)."""
    modules = package_modules(root)
    graph = {name: set() for name in modules}
    for module, path in modules.items():
        for base, name in imported_names(module, path):
            target = f"{base}.{name}" if name and f"{base}.{name}" in modules else base
            while target and target not in modules and target.startswith(PACKAGE + "."):
                target = target.rsplit(".", 1)[0]  # a name inside a module: that module
            if target in modules and target != module:
                graph[module].add(target)
    return graph


def layer_of(module):
    """The layer (0..5) of a dotted module name, or None when no rule places it."""
    inner = module[len(PACKAGE) + 1:] if module != PACKAGE else ""
    best = None
    for prefix, layer in RULES:
        matches = inner == prefix or (prefix and inner.startswith(prefix + "."))
        if matches and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def violations(graph):
    """([(module, its layer, imported module, that layer)] upward imports, [unplaced modules])."""
    unplaced = sorted(m for m in graph if layer_of(m) is None)
    upward = sorted((m, layer_of(m), t, layer_of(t)) for m in graph for t in graph[m]
                    if layer_of(m) is not None and layer_of(t) is not None
                    and layer_of(t) > layer_of(m))
    return upward, unplaced


def short(module):
    return module[len(PACKAGE) + 1:] if module != PACKAGE else "(package __init__)"


def report(root, out=sys.stdout):
    """Prints the layered graph of the checkout at ``root``; returns the violation count."""
    graph = import_graph(root)
    print(f"== {root}: {len(graph)} modules", file=out)
    for module in sorted(graph, key=lambda m: (layer_of(m) if layer_of(m) is not None else 9,
                                               m)):
        layer = layer_of(module)
        name = LAYER_NAMES[layer] if layer is not None else "UNPLACED"
        targets = ", ".join(sorted(short(t) for t in graph[module])) or "-"
        number = layer if layer is not None else "?"
        print(f"  [{number} {name:8s}] {short(module)} -> {targets}", file=out)
    upward, unplaced = violations(graph)
    for module, layer, target, target_layer in upward:
        print(f"  VIOLATION: {short(module)} ({LAYER_NAMES[layer]}) imports {short(target)} "
              f"({LAYER_NAMES[target_layer]})", file=out)
    for module in unplaced:
        print(f"  UNPLACED: {short(module)} (no rule gives it a layer)", file=out)
    print(f"  {len(upward)} upward import(s), {len(unplaced)} unplaced module(s)", file=out)
    return len(upward) + len(unplaced)


def main(argv):
    roots = argv or [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    failures = sum(report(root) for root in roots)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
