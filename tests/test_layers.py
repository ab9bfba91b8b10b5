"""The package's layers point one way (STYLE practice 13), and the engine never names a method.

Every module is parsed and every import counted, function-level ones included (an import inside a
function is still a dependency).  The test fails on any import cycle, on an import against the layer
order below, on a module importing a command module, and on an engine module that names a method.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"harness": ROOT / "harness", "harness.methods": ROOT / "methods", "harness.baselines": ROOT / "baselines"}

# Bottom to top; a module may import its own layer or a lower one.  Most specific prefix wins.
LAYERS = [
    ("core", ["harness.core"]),                                      # errors, registry, hashing, files, stats, figures
    ("config", ["harness.config"]),                                  # compose + validate (plug-ins through the registry)
    ("track", ["harness.track"]),                                    # MLflow store
    ("data", ["harness.data"]),
    ("models", ["harness.backbones", "harness.objectives"]),
    ("field", ["harness.field"]),                                    # Field, Net, Exact, Piecewise, Mixture, Guided
    ("sampling", ["harness.sample", "harness.split"]),
    ("evaluation", ["harness.evaluate"]),
    ("clusters", ["harness.clusters"]),                              # DDM partitioning
    ("training", ["harness.train"]),                                 # units, loop, checkpoints
    ("api", ["harness.api"]),                                        # method and guidance protocols
    ("pipeline", ["harness.pipeline"]),
    ("plugins", ["harness.methods", "harness.baselines"]),
    ("launch", ["harness.launch"]),
    ("sweep", ["harness.sweep"]),
    ("tables", ["harness.tables"]),
    ("cli", ["harness.cli", "harness"]),
]
COMMAND_MODULES = ("harness.cli", "harness.sweep.commands", "harness.tables.commands", "harness.data.commands")
# objectives know nothing about backbones (SiT's transport/ never imports models.py), and back
SEPARATE = [("harness.objectives", "harness.backbones"), ("harness.backbones", "harness.objectives")]


def modules() -> dict[str, Path]:
    out = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if prefix == "harness" and parts and parts[0] in ("methods", "baselines"):
                continue
            out[".".join([prefix, *parts])] = path
    return out


MODULES = modules()


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(name: str, path: Path) -> set[str]:
    """Harness modules ``name`` imports anywhere in its file (``from m import x`` counts m.x if it is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for t in targets:
            if t.startswith("harness"):
                r = resolve(t)
                if r and r != name:
                    found.add(r)
    return found


GRAPH = {name: imports(name, path) for name, path in MODULES.items()}


def layer(name: str) -> int:
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(LAYERS) for p in prefixes
                if name == p or name.startswith(p + ".")), default=None)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def test_every_module_has_a_layer_and_imports_only_downward():
    bad = [f"{a} ({LAYERS[layer(a)][0]}) imports {b} ({LAYERS[layer(b)][0]})"
           for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    index, low, stack, on, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in GRAPH[v]:
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
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_objectives_and_backbones_do_not_know_each_other():
    bad = [f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps
           for x, y in SEPARATE if a.startswith(x) and b.startswith(y)]
    assert not bad, bad


def test_command_modules_are_not_libraries():
    bad = [f"{a} imports {b}" for a, deps in GRAPH.items() for b in deps if b in COMMAND_MODULES]
    assert not bad, bad


def test_core_imports_nothing_above_it():
    bad = [f"{a} imports {b}" for a, deps in GRAPH.items() if a.startswith("harness.core")
           for b in deps if not b.startswith("harness.core")]
    assert not bad, bad


def _strings(tree: ast.AST) -> list[str]:
    """String constants that are not docstrings."""
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in docs]


def test_no_engine_module_names_a_method():
    """A method is one file plus one config; the engine finds it through the registry, never by name."""
    from harness.core.registry import registry

    names = [n for n in registry("method").keys() if not n.startswith("_")]
    assert "cbs" in names and "monolithic" in names  # the check below has something to find
    pattern = re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])")
    bad = []
    for name, path in MODULES.items():
        if name.startswith(("harness.methods", "harness.baselines")):
            continue
        for text in _strings(ast.parse(path.read_text())):
            if pattern.search(text):
                bad.append(f"{path.relative_to(ROOT)}: {text[:80]!r}")
    assert not bad, "engine modules naming a method:\n" + "\n".join(bad)
