"""The package's rules of dependency, read from the source (no import runs):

1. app -> {interop, toolkit, core}; interop -> core; toolkit -> core; core -> backends;
   backends -> nothing of rnncore outside backends (numpy, scipy, numba, compiled only);
2. inside core, only functional imports the backends;
3. no function-level import of a project module (it hides a circle);
4. no circles.

`python tests/test_import_rules.py` prints the graph's figures: modules, arrows, upward
arrows, circles.
"""
import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "rnncore"

# what each wing may import besides itself
ALLOWED = {
    "app": {"interop", "toolkit", "core", "version"},
    "interop": {"core", "version"},
    "toolkit": {"core", "version"},
    "core": {"backends", "version"},
    "backends": set(),
    "version": set(),
    # the package's front: the public names, gathered from every wing
    "front": {"app", "interop", "toolkit", "core", "backends", "version"},
}


def wing(module):
    parts = module.split(".")
    if len(parts) == 1 or parts[1] in ("__init__", "torch", "distributed", "dask"):
        return "front"
    if parts[1] == "__main__":
        return "app"
    if parts[1] == "_version":
        return "version"
    return parts[1]


def modules(root=SRC):
    """{dotted name: path} of every module of the package."""
    found = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _resolve(module, is_package, level, name):
    if not level:
        return name
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def imports(known, root=SRC):
    """[(importer, imported, line, at module level)] for every import of a project module;
    `from package import submodule` counts as importing the submodule."""
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        is_package = path.name == "__init__.py"
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
            else:
                continue
            for target in targets:
                # the deepest project module the name reaches
                while target and target not in known:
                    target = target.rpartition(".")[0]
                if target and target.split(".")[0] == PACKAGE and target != module:
                    found.append((module, target, node.lineno, id(node) in top))
    return found


def upward(importer, imported):
    """Whether the import goes against the wings' order (within a wing anything goes)."""
    a, b = wing(importer), wing(imported)
    return a != b and b not in ALLOWED[a]


def circles(edges):
    """The strongly connected components of more than one module (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
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
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


KNOWN = modules()
IMPORTS = imports(KNOWN)
EDGES = sorted({(a, b) for a, b, _, _ in IMPORTS})


def test_every_wing_imports_only_below_it():
    wrong = [f"{a} -> {b}" for a, b in EDGES if upward(a, b)]
    assert not wrong, "imports against the wings' order: " + "; ".join(wrong)


def test_backends_import_nothing_of_rnncore_outside_them():
    wrong = [f"{a} -> {b}" for a, b in EDGES if wing(a) == "backends" and wing(b) != "backends"]
    assert not wrong, wrong


def test_inside_core_only_functional_imports_the_backends():
    door = f"{PACKAGE}.core.functional"
    wrong = [f"{a} -> {b}" for a, b in EDGES if wing(a) == "core" and wing(b) == "backends" and a != door]
    assert not wrong, wrong


def test_no_function_level_import_of_a_project_module():
    # rnncore.torch replaces itself by the adapter at import: a module-level import
    wrong = [f"{a}:{line} imports {b}" for a, b, line, top in IMPORTS if not top]
    assert not wrong, wrong


def test_no_circles():
    assert circles(EDGES) == []


def test_the_rules_see_the_package():
    # a parser that found nothing would pass every rule above
    assert len(KNOWN) > 25 and len(EDGES) > 40
    assert (f"{PACKAGE}.core.layers", f"{PACKAGE}.core.functional") in EDGES
    assert upward(f"{PACKAGE}.core.layers", f"{PACKAGE}.toolkit.nn")
    assert upward(f"{PACKAGE}.backends.registry", f"{PACKAGE}.core.spec")
    assert not upward(f"{PACKAGE}.app.demo", f"{PACKAGE}.toolkit.forecasting")
    assert circles([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]) == [["a", "b", "c"]]


def summary():
    ups = [(a, b) for a, b in EDGES if upward(a, b)]
    return (f"{len(KNOWN)} modules, {len(EDGES)} arrows, {len(ups)} upward, {len(circles(EDGES))} circles, "
            f"{sum(not top for *_, top in IMPORTS)} function-level imports")


if __name__ == "__main__":
    print(summary())
    sys.exit(0)
