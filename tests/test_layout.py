"""The package is a pipeline with one direction: every import of every module (read with ast,
including imports inside functions, which a plain import-time check would miss) goes from a
later stage to an earlier one, and the modules import no one in a cycle.

Stages, earliest first: the neutral modules every stage may use (naming, errors, output,
_version); model; derivation; render and codegen (peers: neither imports the other); verify and
training (peers); the public face (symbp/__init__.py); cli; symbp/__main__.py. Inside one stage
folder a module may import another of the same folder, as long as that makes no cycle.
"""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "symbp"

NEUTRAL = {"symbp.naming", "symbp.errors", "symbp.output", "symbp._version"}
RANK = {"model": 1, "derivation": 2, "render": 3, "codegen": 3, "verify": 4, "training": 4,
        "cli": 6}
FACE, MAIN = 5, 7


def _modules():
    mods = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _targets(module, path, node):
    """The symbp modules an import statement reads (``from x import y``: x.y when y is a
    module, else x)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[:len(package) - node.level + 1]
            origin = ".".join(base + ([node.module] if node.module else []))
        else:
            origin = node.module or ""
        names = [f"{origin}.{a.name}" if f"{origin}.{a.name}" in MODULES else origin for a in node.names]
    out = set()
    for name in names:
        if name.split(".")[0] != "symbp":
            continue
        while name not in MODULES:     # symbp.model.graph.Graph -> symbp.model.graph
            name = name.rpartition(".")[0]
        out.add(name)
    return out


def _imports():
    graph = {}
    for module, path in MODULES.items():
        found = {}
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(module, path, node):
                    found.setdefault(target, node.lineno)
        found.pop(module, None)
        graph[module] = found
    return graph


IMPORTS = _imports()


def _stage(module):
    if module in NEUTRAL:
        return "neutral", 0
    if module == "symbp":
        return "face", FACE
    if module == "symbp.__main__":
        return "main", MAIN
    folder = module.split(".")[1]
    assert folder in RANK, f"{module}: not in a stage folder; add its folder to RANK or NEUTRAL"
    return folder, RANK[folder]


def test_the_neutral_modules_import_no_stage():
    bad = [f"{m} imports {t} (line {line})" for m in NEUTRAL if m in IMPORTS
           for t, line in IMPORTS[m].items() if t not in NEUTRAL]
    assert bad == []


def test_every_import_goes_to_an_earlier_stage():
    bad = []
    for module, targets in IMPORTS.items():
        folder, rank = _stage(module)
        for target, line in targets.items():
            tfolder, trank = _stage(target)
            if trank < rank or tfolder == folder:
                continue
            bad.append(f"{MODULES[module].relative_to(PKG.parent)}:{line}: {module} ({folder}) "
                       f"imports {target} ({tfolder})")
    assert bad == [], "\n".join(bad)


def test_no_import_cycle():
    # depth-first search over the import graph; a back edge closes a cycle
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(IMPORTS.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"
    for m in sorted(IMPORTS):
        if m not in state:
            visit(m)
    assert cycles == [], "\n".join(cycles)


def test_the_checker_sees_imports_inside_functions():
    # a late import inside a function is an import like any other (the cycles this test guards
    # against were all late imports)
    node = ast.parse("def f():\n    from ..render.latex import render\n").body[0].body[0]
    assert _targets("symbp.derivation.equations", PKG / "derivation" / "equations.py", node) == {"symbp.render.latex"}
    node = ast.parse("from .. import naming, __version__").body[0]
    assert _targets("symbp.codegen.emit", PKG / "codegen" / "emit.py", node) == {"symbp.naming", "symbp"}


def test_examples_use_the_public_face_only():
    # examples/*.py show what a user writes: ``import symbp`` and ``symbp.<name>``, never a stage
    # module (whose layout may change)
    bad = []
    for path in sorted((PKG.parent / "examples").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.name}:{node.lineno}: {n}" for n in names if n.startswith("symbp.")]
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
                inner = node.value
                if isinstance(inner.value, ast.Name) and inner.value.id == "symbp" and inner.attr in RANK:
                    bad.append(f"{path.name}:{node.lineno}: symbp.{inner.attr}.{node.attr}")
    assert bad == [], "\n".join(bad)
