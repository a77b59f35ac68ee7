"""The package's layers hold: every import of every module (at module level and inside functions: a
lazy import is still a dependency) goes down the declared order, no modules import each other in a
circle, and no module imports another module's ``_private`` names.

The declared order (the package's layers, highest first)::

    cli -> report -> study -> protocols -> export -> checkpoint -> prune -> measure -> train
        -> models, data -> io, autoload, devices, resources, schema, track -> prunelab (the root:
        ``__version__``) -> errors

Imports under ``if TYPE_CHECKING:`` are left out: they never run (they name a type for the checker).
The walk reads the source with :mod:`ast`, so it sees imports in code paths no test executes.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "prunelab"
#: tiers, highest first: a module may import its own package and any package of a lower tier
TIERS: tuple[tuple[str, ...], ...] = (
    ("__main__",), ("cli",), ("report",), ("study",), ("protocols",), ("export",), ("checkpoint",),
    ("prune",), ("measure",), ("train",), ("models", "data"),
    ("io", "autoload", "devices", "resources", "schema", "track"),
    (ROOT,), ("errors",),
)
RANK = {layer: i for i, tier in enumerate(TIERS) for layer in tier}


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``imported`` (a module of the package) at ``line``; ``names`` are the names
    taken from it (``from m import a, b``) or read off it as attributes (``m.a``)."""

    importer: str
    imported: str
    line: int
    names: tuple[str, ...] = ()


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_files()


def layer(module: str) -> str:
    """The layer a module belongs to: the package (or top-level module) under ``prunelab``; the root
    package itself (the version and the error type) is the layer ``prunelab``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module an ``import from`` names (relative imports resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def walk(tree: ast.AST):
    """Every node, leaving out ``if TYPE_CHECKING:`` bodies (their ``else`` branches stay)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if type_checking_block(node):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def edges_of(module: str) -> list[Edge]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    edges: list[Edge] = []
    aliases: dict[str, str] = {}  # a local name bound to a package module -> that module
    for node in walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == ROOT or a.name.startswith(ROOT + "."):
                    edges.append(Edge(module, a.name, node.lineno))
                    if a.asname:
                        aliases[a.asname] = a.name
        elif isinstance(node, ast.ImportFrom):
            target = resolve(module, node)
            if not (target == ROOT or target.startswith(ROOT + ".")):
                continue
            names = []
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in MODULES:  # ``from pkg import module``: a dependency on that module
                    edges.append(Edge(module, sub, node.lineno))
                    aliases[a.asname or a.name] = sub
                else:
                    names.append(a.name)
            if names:
                edges.append(Edge(module, target, node.lineno, tuple(names)))
    for node in walk(tree):  # attributes read off an imported module: ``mod._name``
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            edges.append(Edge(module, aliases[node.value.id], node.lineno, (node.attr,)))
    return edges


def all_edges() -> list[Edge]:
    return [e for m in MODULES for e in edges_of(m)]


def cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a module importing itself."""
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for e in edges:
        if e.imported in MODULES:
            graph[e.importer].add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            if len(component) > 1 or v in graph[v]:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def upward(edges: list[Edge]) -> list[str]:
    out = []
    for e in edges:
        src, dst = layer(e.importer), layer(e.imported)
        if src == dst:
            continue
        if RANK.get(dst, -1) <= RANK.get(src, len(TIERS)):
            out.append(f"{e.importer}:{e.line} imports {e.imported} ({src} -> {dst})")
    return out


def private_imports(edges: list[Edge]) -> list[str]:
    """``_name`` taken from another module (dunders such as ``__version__`` are public)."""
    out = []
    for e in edges:
        if e.imported == e.importer:
            continue
        for name in e.names:
            if name.startswith("_") and not (name.startswith("__") and name.endswith("__")):
                out.append(f"{e.importer}:{e.line} uses {e.imported}.{name}")
    return out


EDGES = all_edges()


def test_the_walk_sees_imports_inside_functions_and_every_package():
    """The walk is not vacuous: it finds lazy imports and knows every layer that exists."""
    lazy = [e for e in EDGES if e.importer == "prunelab.cli.study" and e.imported.startswith("prunelab.study")]
    assert lazy, "cli.study imports the study package inside its functions"
    layers = {layer(m) for m in MODULES}
    assert layers <= set(RANK), f"packages with no declared layer: {sorted(layers - set(RANK))}"
    assert len(MODULES) > 100 and len(EDGES) > 300


def test_the_checks_catch_a_circle_an_upward_and_a_private_import():
    """Each check fails on a violation made up for it (so a pass means the package has none)."""
    made_up = [Edge("prunelab.measure.timing", "prunelab.export.onnx", 1),
               Edge("prunelab.export.onnx", "prunelab.measure.timing", 2, ("_trial_call",))]
    assert ["prunelab.export.onnx", "prunelab.measure.timing"] in cycles(made_up)
    assert upward(made_up) == ["prunelab.measure.timing:1 imports prunelab.export.onnx (measure -> export)"]
    assert private_imports(made_up) == ["prunelab.export.onnx:2 uses prunelab.measure.timing._trial_call"]
    assert upward([Edge("prunelab.study.runner", "prunelab.report", 3)])  # the runner may not write reports
    assert upward([Edge("prunelab.models.registry", "prunelab.data", 4)])  # peers in a tier are separate layers


def test_no_import_circles():
    found = cycles(EDGES)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_go_down_the_declared_layers():
    found = upward(EDGES)
    assert not found, "imports against the layer order:\n" + "\n".join(found)


def test_no_private_names_cross_modules():
    found = private_imports(EDGES)
    assert not found, "private names used across modules:\n" + "\n".join(found)


#: what ``measure`` may import from the package: it counts and times models, and trains nothing
MEASURE_USES = {"measure", "models", "devices", "resources", "io", ROOT, "errors"}


def test_measure_is_a_leaf_for_counting_and_timing():
    """No ONNX Runtime and no plotting in ``measure`` (they live in ``export`` and ``report``): no import
    of them and no module name handed to an importer (``require("matplotlib")``); and no training,
    pruning or export code (stricter than the layer order, which would allow ``train``)."""
    banned = {"onnx", "onnxruntime", "matplotlib"}
    uses = [f"{e.importer}:{e.line} imports {e.imported}" for e in EDGES
            if layer(e.importer) == "measure" and layer(e.imported) not in MEASURE_USES]
    assert not uses, "measure is not a leaf:\n" + "\n".join(uses)
    for module, path in MODULES.items():
        if layer(module) != "measure":
            continue
        for node in walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [node.value] if isinstance(node, ast.Constant) and isinstance(node.value, str) else []
            assert not {n.split(".")[0] for n in names} & banned, f"{module}:{node.lineno} uses {names}"


@pytest.mark.parametrize("private", ["_out_channel_pruning_fn", "_param_to_name", "_module2name",
                                     "_prunelab_pools"])
def test_torch_pruning_is_used_through_its_public_api(private):
    """No source file reads torch-pruning's private attributes or sets its own on torch-pruning objects
    (the version range it is tested with: ``test_structured.py``, ``torch-pruning`` in pyproject.toml)."""
    pattern = re.compile(rf"(?<!\w){private}\b")  # a name or an attribute, not the end of a longer name
    users = [m for m, p in MODULES.items() if pattern.search(p.read_text())]
    assert not users, f"{private} used in {users}"


def test_the_repository_cites_no_document_outside_it():
    """Docstrings cite papers and public reference code, never notes that are not in the repository."""
    repo = SRC.parent
    outside = [re.compile(p) for p in (r"seeds\.md", r"anchors\.md", r"\.\./shared", r"pitfall\s+\d")]
    files = [p for d in ("src", "tests", "benchmarks", "recipes", "scripts") for p in (repo / d).rglob("*")
             if p.suffix in (".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".sh")] + [repo / "README.md"]
    assert len(files) > 100
    found = [f"{p.relative_to(repo)}: {m.group()}" for p in files if p != Path(__file__).resolve()
             for pattern in outside for m in [pattern.search(p.read_text(errors="replace").lower())] if m]
    assert not found, "references to documents outside the repository:\n" + "\n".join(found)


def test_a_package_loads_every_public_module_and_keeps_import_errors(tmp_path, monkeypatch):
    """:func:`prunelab.autoload.import_modules`, which fills the model, dataset, criterion and study-kind
    registries: public modules in name order, ``_private`` ones left out, a broken one kept as one line."""
    from prunelab.autoload import import_modules

    pkg = tmp_path / "autoload_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("ORDER = []\n")
    (pkg / "b.py").write_text("from autoload_probe import ORDER\nORDER.append('b')\n")
    (pkg / "a.py").write_text("from autoload_probe import ORDER\nORDER.append('a')\n")
    (pkg / "_hidden.py").write_text("raise RuntimeError('private modules are not loaded')\n")
    (pkg / "c.py").write_text("import no_such_module_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import autoload_probe

    errors: dict[str, str] = {}
    import_modules("autoload_probe", autoload_probe.__path__, errors)
    assert autoload_probe.ORDER == ["a", "b"]
    assert list(errors) == ["autoload_probe.c"] and "no_such_module_anywhere" in errors["autoload_probe.c"]
    with pytest.raises(ImportError, match="no_such_module_anywhere"):
        import_modules("autoload_probe", autoload_probe.__path__)
    for name in [m for m in sys.modules if m.startswith("autoload_probe")]:
        monkeypatch.delitem(sys.modules, name)
