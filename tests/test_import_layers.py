"""The package's import rules (docs/architecture.md), checked over the source with ``ast``:
every import counts, module-level or inside a function, except under ``if TYPE_CHECKING:``.

1. Layers: a module imports only from its own layer or the layers below it.
2. No circles: the import graph between zfprobe's modules has no cycle.
3. Siblings at the bottom stay apart: the engine (with ops) and io never import each other.
4. Inside a study, imports run one way: a renderer reads the computation, and the computation
   reaches its renderer only through a result's ``save()`` or notebook display (``_repr_png_`` /
   ``_repr_html_``) where the renderer reads nothing back (its result types for annotations only).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Highest first. A prefix names a package (and everything in it) or one module.
LAYERS = [
    ["zfprobe.cli"],
    ["zfprobe.torch", "zfprobe.keras"],
    ["zfprobe.adapters.engines", "zfprobe.adapters.training"],
    ["zfprobe.__init__", "zfprobe.legacy_paths"],
    ["zfprobe.adapters.frontends"],
    ["zfprobe.report"],
    ["zfprobe.probe"],
    ["zfprobe.studies"],
    ["zfprobe.adapters.backends"],
    ["zfprobe.engine", "zfprobe.ops", "zfprobe.io"],
    ["zfprobe.errors", "zfprobe.adapters.__init__", "zfprobe.cli.__init__"],
]
APART = [("zfprobe.engine", "zfprobe.io"), ("zfprobe.ops", "zfprobe.io")]


def _module_files():
    for base, pkg in ((ROOT / "zfprobe", "zfprobe"), (ROOT / "adapters", "zfprobe.adapters"), (ROOT / "cli", "zfprobe.cli")):
        for path in base.rglob("*.py"):
            rel = path.relative_to(base).with_suffix("").parts
            yield ".".join((pkg, *rel)), path


MODULES = dict(_module_files())


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py" if name in MODULES else False


def _resolve(name: str) -> str | None:
    """The module a dotted import name refers to (``zfprobe.ops`` -> ``zfprobe.ops.__init__``)."""
    if f"{name}.__init__" in MODULES:
        return f"{name}.__init__"
    if name in MODULES:
        return name
    return None


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = set()
    for node in ast.walk(tree):  # imports under `if TYPE_CHECKING:` are for annotations only
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            # `from pkg import sub` imports the submodule when there is one, else a name of pkg
            targets = [f"{base}.{a.name}" if _resolve(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("zfprobe"):
                resolved = _resolve(target)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> int:
    best, best_len = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"{name} belongs to no layer: add it to LAYERS and docs/architecture.md"
    return best


def test_every_module_has_a_layer():
    assert len(MODULES) > 100
    for name in MODULES:
        _layer(name)


def test_no_import_from_a_higher_layer():
    bad = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
           for a, targets in GRAPH.items() for b in targets if _layer(b) < _layer(a)]
    assert not bad, "\n".join(sorted(bad))


def test_engine_and_io_stay_apart():
    bad = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
           for x, y in APART for p, q in ((x, y), (y, x)) if a.startswith(p + ".") and b.startswith(q + ".")]
    assert not bad, "\n".join(sorted(bad))


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles():
    assert _cycles(GRAPH) == []


def test_the_checker_finds_a_circle_and_a_layer_breach():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _layer("zfprobe.engine.graph") > _layer("zfprobe.studies.mining.compute") > _layer("zfprobe.cli.main")


STUDIES = sorted(p.name for p in (ROOT / "zfprobe" / "studies").iterdir() if (p / "__init__.py").exists())


@pytest.mark.parametrize("study", STUDIES)
def test_study_folder_holds_its_computation_and_rendering(study):
    folder = ROOT / "zfprobe" / "studies" / study
    assert (folder / "__init__.py").exists()
    assert (folder / "compute.py").exists() or (folder / "engine.py").exists()
    renders = [n for n in MODULES if n.startswith(f"zfprobe.studies.{study}.") and n.endswith(".render")]
    for r in renders:  # a renderer never pulls in another study's computation's renderer in a circle
        for target in GRAPH[r]:
            assert not (target.startswith(f"zfprobe.studies.{study}.") and r in GRAPH.get(target, ())), (r, target)


def test_top_of_the_package_stays_small():
    entries = [p.name for p in (ROOT / "zfprobe").iterdir() if p.name != "__pycache__"]
    assert len(entries) <= 12, sorted(entries)
